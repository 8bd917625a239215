//! Authentication and authorization of every registry call.
//!
//! A tower layer in front of all services turns `authorization: Bearer
//! <JWT>` into a [`Caller`] (subject, tenant, roles) in the request's
//! extensions, then checks the method against [`allowed_roles`] — the one
//! table of method → roles. Health and reflection pass without a token (a
//! probe or grpcurl has none); a method missing from the table is denied.
//! Failures are UNAUTHENTICATED or PERMISSION_DENIED with a reason that helps
//! the caller and never echoes the token. With a tenant rate set, an
//! admitted call over its tenant's rate is refused here too
//! ([`crate::tenant_limits`]), before anything reads its body.
//!
//! Keys come from configuration (an HS256 secret, a PEM key, a JWKS file)
//! or from an identity provider ([`jwks`], fetched with [`fetch`]); the
//! tenant and roles are read where [`claims`] says.

pub mod claims;
pub mod fetch;
pub mod jwks;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde::Deserialize;
use tonic::Status;
use tonic::codegen::http;

use crate::caller::{Caller, PlatformOperator, TenantAdmin};
use crate::error::Error;
use crate::tenant_limits::{TenantLimits, TenantRate};
use claims::ClaimMapping;

/// A role a token can grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Reads agents and providers.
    Viewer,
    /// Also writes and rolls back agents.
    Editor,
    /// Everything but ResolveAgent, including every provider write.
    Admin,
    /// Only ResolveAgent and WatchChanges.
    Runtime,
    /// Key operations over every tenant (rewrap, retire, global key
    /// status). Not a tenant role: held only by the token subjects the
    /// deployment lists (`PLATFORM_OPERATOR_SUBJECTS`).
    PlatformOperator,
}

impl Role {
    /// The claim spelling (`viewer`, `editor`, `admin`, `runtime`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Editor => "editor",
            Self::Admin => "admin",
            Self::Runtime => "runtime",
            Self::PlatformOperator => "platform-operator",
        }
    }

    /// Every role.
    pub const ALL: [Role; 5] = [
        Role::Viewer,
        Role::Editor,
        Role::Admin,
        Role::Runtime,
        Role::PlatformOperator,
    ];

    pub(crate) fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|role| role.as_str() == name)
    }
}

const READERS: &[Role] = &[Role::Viewer, Role::Editor, Role::Admin];
const EDITORS: &[Role] = &[Role::Editor, Role::Admin];
const ADMINS: &[Role] = &[Role::Admin];
const RUNTIME: &[Role] = &[Role::Runtime];
/// Every tenant role: a change stream says what changed, never a secret.
const WATCHERS: &[Role] = &[Role::Viewer, Role::Editor, Role::Admin, Role::Runtime];
const OPERATORS: &[Role] = &[Role::PlatformOperator];
/// Tenant admins see their own tenant's key counts; operators see all.
const KEY_READERS: &[Role] = &[Role::Admin, Role::PlatformOperator];
/// Tenant admins read their tenant's audit trail; operators every tenant's.
const AUDITORS: &[Role] = &[Role::Admin, Role::PlatformOperator];

/// The roles allowed to call `method` (a full gRPC path such as
/// `/agentregistry.v1.AgentService/CreateAgent`); `None` for a method the
/// table does not know, which is denied.
pub fn allowed_roles(method: &str) -> Option<&'static [Role]> {
    let (service, name) = method.trim_start_matches('/').split_once('/')?;
    let roles = match (service, name) {
        (
            "agentregistry.v1.AgentService",
            "GetAgent"
            | "ListAgents"
            | "ListAgentVersions"
            | "GetAgentVersion"
            | "DiffAgentVersions"
            | "ListAgentLabels"
            | "ListAgentLabelHistory",
        ) => READERS,
        (
            "agentregistry.v1.AgentService",
            "CreateAgent" | "UpdateAgent" | "DeleteAgent" | "UndeleteAgent" | "RollbackAgent"
            | "SetAgentLabel" | "DeleteAgentLabel",
        ) => EDITORS,
        // Purging destroys history that no undelete brings back.
        ("agentregistry.v1.AgentService", "PurgeAgent") => ADMINS,
        (
            "agentregistry.v1.ProviderService",
            "GetProvider"
            | "ListProviders"
            | "ListProviderVersions"
            | "GetProviderVersion"
            | "DiffProviderVersions"
            | "ListProviderLabels"
            | "ListProviderLabelHistory",
        ) => READERS,
        // Labels of providers, like those of agents: editors set them, and
        // only admins the tenant's protected ones (checked by the store). A
        // label moved to an older provider version never sends the key to
        // another destination (ResolveAgent's DESTINATION_CHANGED).
        ("agentregistry.v1.ProviderService", "SetProviderLabel" | "DeleteProviderLabel") => EDITORS,
        ("agentregistry.v1.LabelPolicyService", "GetLabelPolicy") => READERS,
        ("agentregistry.v1.LabelPolicyService", "UpdateLabelPolicy") => ADMINS,
        (
            "agentregistry.v1.ProviderService",
            "CreateProvider" | "UpdateProvider" | "DeleteProvider" | "UndeleteProvider"
            | "PurgeProvider" | "RollbackProvider" | "RevokeProviderKey",
        ) => ADMINS,
        ("agentregistry.v1.RuntimeService", "ResolveAgent") => RUNTIME,
        ("agentregistry.v1.WatchService", "WatchChanges") => WATCHERS,
        ("agentregistry.v1.KeyService", "GetKeyStatus") => KEY_READERS,
        ("agentregistry.v1.KeyService", "RewrapCredentials" | "RetireKeyVersion") => OPERATORS,
        ("agentregistry.v1.AuditService", "ListAuditEvents") => AUDITORS,
        _ => return None,
    };
    Some(roles)
}

/// Whether `method` is open without a token: health checks and reflection.
pub fn is_public(method: &str) -> bool {
    method.starts_with("/grpc.health.v1.Health/")
        || method.starts_with("/grpc.reflection.v1.ServerReflection/")
        || method.starts_with("/grpc.reflection.v1alpha.ServerReflection/")
}

/// Where verification keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// An HS256 shared secret.
    Hs256(zeroize::Zeroizing<Vec<u8>>),
    /// One RS256 or ES256 public key, PEM.
    PublicKeyPem(Vec<u8>),
    /// A JWKS document: several RS256/ES256 keys chosen by `kid`.
    Jwks(Vec<u8>),
    /// An identity provider's published keys, fetched by `serve`
    /// ([`jwks::RemoteKeys`], [`Authenticator::remote`]).
    Remote,
}

/// The longest token lifetime (`exp - iat`) accepted unless configured
/// otherwise: 24 hours.
pub const DEFAULT_MAX_LIFETIME_SECONDS: u64 = 24 * 60 * 60;

/// What a token must satisfy besides its signature.
#[derive(Debug, Clone)]
pub struct Expectations {
    /// Required `iss`, when configured.
    pub issuer: Option<String>,
    /// Required `aud`, when configured.
    pub audience: Option<String>,
    /// Seconds of clock skew allowed on `exp`, `nbf` and `iat`.
    pub leeway_seconds: u64,
    /// Longest lifetime, `exp - iat`, in seconds; `iat` is required.
    pub max_lifetime_seconds: u64,
    /// The `kid` of a single HS256 secret or PEM key (a JWKS names its
    /// own keys).
    pub key_id: Option<String>,
}

impl Default for Expectations {
    fn default() -> Self {
        Self {
            issuer: None,
            audience: None,
            leeway_seconds: 0,
            max_lifetime_seconds: DEFAULT_MAX_LIFETIME_SECONDS,
            key_id: None,
        }
    }
}

/// Verification keys by `kid`: a token is verified by the key of exactly
/// the kid it names, or, naming none, by the `None` entry or the only key.
pub(crate) type Keys = HashMap<Option<String>, (Algorithm, DecodingKey)>;

/// Where the keys are held.
enum KeyStore {
    /// Loaded once from configuration.
    Fixed(Arc<Keys>),
    /// Published by an identity provider and refreshed.
    Remote(Arc<jwks::RemoteKeys>),
}

/// Verifies tokens into callers.
pub struct Authenticator {
    keys: KeyStore,
    expectations: Expectations,
    /// Where the tenant and roles are in the claims.
    claims: ClaimMapping,
    /// The subjects whose claim of `platform-operator` counts.
    platform_operators: std::collections::HashSet<String>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys = match &self.keys {
            KeyStore::Fixed(keys) => format!("{} configured", keys.len()),
            KeyStore::Remote(remote) => format!("{remote:?}"),
        };
        f.debug_struct("Authenticator")
            .field("keys", &keys)
            .field("expectations", &self.expectations)
            .field("claims", &self.claims)
            .field("platform_operators", &self.platform_operators)
            .finish()
    }
}

#[derive(Deserialize)]
struct Subject {
    sub: String,
}

/// An authenticated caller and its roles.
#[derive(Debug, Clone)]
pub struct Identity {
    pub caller: Caller,
    pub roles: Vec<Role>,
}

impl Authenticator {
    /// Loads the keys; `setting` names the source for start-up errors.
    pub fn new(
        source: &KeySource,
        expectations: Expectations,
        setting: &str,
    ) -> Result<Self, Error> {
        let bad = |problem: String| Error::config(setting, problem);
        let mut keys = HashMap::new();
        let kid = expectations.key_id.clone();
        match source {
            KeySource::Hs256(secret) => {
                if secret.len() < 32 {
                    return Err(bad("an HS256 secret must be at least 32 bytes".to_owned()));
                }
                keys.insert(kid, (Algorithm::HS256, DecodingKey::from_secret(secret)));
            }
            KeySource::PublicKeyPem(pem) => {
                let key = DecodingKey::from_rsa_pem(pem)
                    .map(|k| (Algorithm::RS256, k))
                    .or_else(|_| DecodingKey::from_ec_pem(pem).map(|k| (Algorithm::ES256, k)))
                    .map_err(|_| bad("not an RSA or P-256 public key in PEM".to_owned()))?;
                keys.insert(kid, key);
            }
            KeySource::Remote => {
                return Err(bad(
                    "keys from an identity provider are fetched by serve".to_owned()
                ));
            }
            KeySource::Jwks(_) if kid.is_some() => {
                return Err(Error::config(
                    "JWT_KEY_ID",
                    "is for a single HS256 secret or PEM key; a JWKS names its keys itself",
                ));
            }
            KeySource::Jwks(json) => {
                let set: JwkSet = serde_json::from_slice(json)
                    .map_err(|_| bad("not a JWKS document".to_owned()))?;
                for jwk in &set.keys {
                    let algorithm = match &jwk.algorithm {
                        AlgorithmParameters::RSA(_) => Algorithm::RS256,
                        AlgorithmParameters::EllipticCurve(ec)
                            if ec.curve == EllipticCurve::P256 =>
                        {
                            Algorithm::ES256
                        }
                        _ => {
                            return Err(bad(
                                "only RSA (RS256) and P-256 (ES256) keys are supported".to_owned(),
                            ));
                        }
                    };
                    let key = DecodingKey::from_jwk(jwk)
                        .map_err(|e| bad(format!("unusable key: {e}")))?;
                    let kid = jwk.common.key_id.clone();
                    if kid.is_none() && set.keys.len() > 1 {
                        return Err(bad("with several keys, every key needs a kid".to_owned()));
                    }
                    keys.insert(kid, (algorithm, key));
                }
                if keys.is_empty() {
                    return Err(bad("the JWKS holds no keys".to_owned()));
                }
            }
        }
        Ok(Self {
            keys: KeyStore::Fixed(Arc::new(keys)),
            expectations,
            claims: ClaimMapping::default(),
            platform_operators: std::collections::HashSet::new(),
        })
    }

    /// Verifies with the keys an identity provider publishes (see
    /// [`jwks`]).
    pub fn remote(keys: Arc<jwks::RemoteKeys>, expectations: Expectations) -> Self {
        Self {
            keys: KeyStore::Remote(keys),
            expectations,
            claims: ClaimMapping::default(),
            platform_operators: std::collections::HashSet::new(),
        }
    }

    /// Reads the tenant and roles where `claims` says (default: the
    /// top-level `tenant` and `roles`).
    pub fn with_claims(mut self, claims: ClaimMapping) -> Self {
        self.claims = claims;
        self
    }

    /// Lets the tokens of `subjects` hold the `platform-operator` role they
    /// claim; any other token's claim of it is ignored.
    pub fn with_platform_operators(mut self, subjects: Vec<String>) -> Self {
        self.platform_operators = subjects.into_iter().collect();
        self
    }

    /// Verifies a bearer token.
    pub fn verify(&self, token: &str) -> Result<Identity, Status> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| unauthenticated("malformed token"))?;
        match header_json(token) {
            None => return Err(unauthenticated("malformed token")),
            // RFC 7515 §4.1.11: a recipient refuses a token whose `crit`
            // names extensions it does not understand, and this registry
            // understands none.
            Some(header) if header.get("crit").is_some() => {
                return Err(unauthenticated(
                    "the token's header names critical extensions (crit) this registry does not \
                     understand",
                ));
            }
            Some(_) => {}
        }
        let keys = self.keys();
        // A kid names one key: an unknown one is refused even when a
        // single key is configured (it was meant for another key). Only a
        // token that names none may use the only key.
        let (algorithm, key) = match &header.kid {
            Some(kid) => keys.get(&Some(kid.clone())),
            None => keys.get(&None).or_else(|| only_key(&keys)),
        }
        .ok_or_else(|| unauthenticated(UNKNOWN_KID))?;
        if header.alg != *algorithm {
            return Err(unauthenticated("unexpected signing algorithm"));
        }
        let mut validation = Validation::new(*algorithm);
        validation.leeway = self.expectations.leeway_seconds;
        validation.validate_nbf = true;
        // jsonwebtoken checks `iss` and `aud` only when the token has them:
        // a configured one must also be required, or omitting it passes.
        let mut required = vec!["exp", "sub"];
        if self.expectations.audience.is_some() {
            required.push("aud");
        }
        if self.expectations.issuer.is_some() {
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        match &self.expectations.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &self.expectations.issuer {
            validation.set_issuer(&[issuer]);
        }
        // Decoded to a JSON value first: that parse checks every member,
        // while a struct's parse skips the members it does not read without
        // checking them (invalid UTF-8, lone surrogate escapes).
        let claims = jsonwebtoken::decode::<serde_json::Value>(token, key, &validation)
            .map_err(|error| unauthenticated(reason(error.kind())))?
            .claims;
        self.check_lifetime(&claims)?;
        let malformed =
            || unauthenticated("token lacks the sub, tenant or roles claims in the right form");
        let subject = Subject::deserialize(&claims).map_err(|_| malformed())?.sub;
        let tenant = self.claims.tenant(&claims).map_err(|_| malformed())?;
        let roles = self.claims.roles(&claims).map_err(|_| malformed())?;
        if let Err(problem) = check_identity_name(&subject) {
            return Err(unauthenticated(&format!("token's sub {problem}")));
        }
        if let Err(problem) = check_identity_name(&tenant) {
            return Err(unauthenticated(&format!("token's tenant {problem}")));
        }
        Ok(Identity {
            roles,
            caller: Caller { tenant, subject },
        })
    }

    fn keys(&self) -> Arc<Keys> {
        match &self.keys {
            KeyStore::Fixed(keys) => Arc::clone(keys),
            KeyStore::Remote(remote) => remote.current(),
        }
    }

    /// The provider's keys, when they come from one, and the token in
    /// `authorization` names a kid they lack: the provider may have
    /// rotated, so fetching its keys again may let the token through.
    fn may_refresh_for(&self, authorization: Option<&str>) -> Option<&Arc<jwks::RemoteKeys>> {
        let KeyStore::Remote(remote) = &self.keys else {
            return None;
        };
        let token = bearer(authorization?).ok()?;
        let kid = jsonwebtoken::decode_header(token).ok()?.kid?;
        (!remote.current().contains_key(&Some(kid))).then_some(remote)
    }

    /// A token's lifetime is bounded: it carries `iat`, not in the future
    /// (beyond the leeway), and `exp - iat` is at most the configured
    /// maximum. So a token lives at most that long plus the leeway, however
    /// far its `exp` lies. `exp` is already checked to be a number.
    fn check_lifetime(&self, claims: &serde_json::Value) -> Result<(), Status> {
        let max = self.expectations.max_lifetime_seconds;
        let Some(iat) = claims.get("iat").and_then(serde_json::Value::as_f64) else {
            return Err(unauthenticated(
                "token lacks the iat claim (a number): the registry bounds token lifetime",
            ));
        };
        let exp = claims
            .get("exp")
            .and_then(serde_json::Value::as_f64)
            .ok_or_else(|| unauthenticated("token lacks the exp claim"))?;
        let now = jsonwebtoken::get_current_timestamp() as f64;
        if !iat.is_finite() || iat > now + self.expectations.leeway_seconds as f64 {
            return Err(unauthenticated("token issued in the future (iat)"));
        }
        if exp - iat > max as f64 {
            return Err(Status::unauthenticated(format!(
                "token lifetime (exp - iat) exceeds the {max} s this registry accepts"
            )));
        }
        Ok(())
    }

    /// Authenticates and authorizes one call to `method`.
    pub fn admit(&self, method: &str, authorization: Option<&str>) -> Result<Identity, Status> {
        let header = authorization
            .ok_or_else(|| unauthenticated("missing authorization: Bearer <token>"))?;
        let mut identity = self.verify(bearer(header)?)?;
        if !self.platform_operators.contains(&identity.caller.subject) {
            identity
                .roles
                .retain(|role| *role != Role::PlatformOperator);
        }
        let allowed = allowed_roles(method).unwrap_or(&[]);
        if identity.roles.iter().any(|role| allowed.contains(role)) {
            Ok(identity)
        } else {
            Err(Error::PermissionDenied {
                method: method.to_owned(),
                required: allowed.iter().map(|r| r.as_str()).collect(),
            }
            .into())
        }
    }
}

/// Signs an HS256 token (the `token` subcommand, development tokens).
pub fn mint_hs256(
    secret: &[u8],
    expectations: &Expectations,
    args: &crate::config::TokenArgs,
) -> Result<String, Error> {
    let unknown: Vec<&String> = args
        .roles
        .iter()
        .filter(|r| Role::parse(r).is_none())
        .collect();
    if !unknown.is_empty() {
        return Err(Error::bad_field(
            "roles",
            format!(
                "unknown roles {unknown:?}; use viewer, editor, admin, runtime, platform-operator"
            ),
        ));
    }
    if args.ttl_seconds > expectations.max_lifetime_seconds {
        return Err(Error::bad_field(
            "ttl_seconds",
            format!(
                "{} s is longer than JWT_MAX_TOKEN_LIFETIME_SECONDS ({} s): the registry would refuse the token",
                args.ttl_seconds, expectations.max_lifetime_seconds
            ),
        ));
    }
    for (field, name) in [("subject", &args.subject), ("tenant", &args.tenant)] {
        check_identity_name(name).map_err(|problem| {
            Error::bad_field(
                field,
                format!("{problem}: the registry would refuse the token"),
            )
        })?;
    }
    let now = jsonwebtoken::get_current_timestamp();
    let mut claims = serde_json::json!({
        "sub": args.subject,
        "tenant": args.tenant,
        "roles": args.roles,
        "iat": now,
        "exp": now + args.ttl_seconds,
    });
    if let Some(issuer) = &expectations.issuer {
        claims["iss"] = serde_json::json!(issuer);
    }
    if let Some(audience) = &expectations.audience {
        claims["aud"] = serde_json::json!(audience);
    }
    let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
    header.kid = expectations.key_id.clone();
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .map_err(|e| Error::Internal(format!("signing: {e}")))
}

/// The refusal of a token whose kid names no key this registry holds.
const UNKNOWN_KID: &str = "unknown signing key (kid)";

/// The most bytes a subject or tenant may hold. Both are stored in every
/// row a caller writes (`changed_by`, `tenant`), in audit events and in
/// the process's per-tenant state, so a token may not set their size; 256
/// bytes hold any identity provider's subject, an e-mail address or a URL.
pub const MAX_IDENTITY_NAME_BYTES: usize = 256;

/// Why `name` cannot be a subject or tenant: empty, longer than
/// [`MAX_IDENTITY_NAME_BYTES`], holding a control character (C0 and C1: a
/// NUL, a line feed, a terminal escape, DEL), which would reach log lines
/// and terminals as it is, or a character that reorders or hides the text
/// around it ([`hides_or_reorders`]), with which one name can be shown as
/// another in an audit listing.
pub fn check_identity_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        Err("is empty".to_owned())
    } else if name.len() > MAX_IDENTITY_NAME_BYTES {
        Err(format!("is longer than {MAX_IDENTITY_NAME_BYTES} bytes"))
    } else if name.chars().any(char::is_control) {
        Err("holds a control character".to_owned())
    } else if name.chars().any(hides_or_reorders) {
        Err("holds a text-direction or invisible character".to_owned())
    } else {
        Ok(())
    }
}

/// Unicode's bidirectional formatting characters (embeddings, overrides,
/// isolates and marks: what rustc's `text_direction_codepoint` lints
/// name), the line and paragraph separators, the zero-width space and the
/// byte-order mark. The zero-width joiner and non-joiner pass: scripts and
/// emoji sequences need them.
fn hides_or_reorders(c: char) -> bool {
    matches!(
        c,
        '\u{061C}'
            | '\u{200B}'
            | '\u{200E}'
            | '\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2066}'..='\u{2069}'
            | '\u{FEFF}'
    )
}

/// The token of an `authorization` header value.
fn bearer(header: &str) -> Result<&str, Status> {
    header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| unauthenticated("authorization must be `Bearer <token>`"))
}

/// A token without a kid may use the only key.
fn only_key(keys: &Keys) -> Option<&(Algorithm, DecodingKey)> {
    if keys.len() == 1 {
        keys.values().next()
    } else {
        None
    }
}

/// The signing keys of a JWKS an identity provider publishes: RSA
/// (RS256) and P-256 (ES256) keys; encryption keys (`use: enc`) and other
/// kinds are skipped, since providers publish those beside their signing
/// keys. The problem when none is usable, or when one of several lacks a
/// kid.
pub(crate) fn signing_keys(set: &JwkSet) -> Result<Keys, String> {
    let mut keys = Keys::new();
    for jwk in &set.keys {
        if jwk.common.public_key_use == Some(jsonwebtoken::jwk::PublicKeyUse::Encryption) {
            continue;
        }
        let Some(algorithm) = jwk_algorithm(jwk) else {
            continue;
        };
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        keys.insert(jwk.common.key_id.clone(), (algorithm, key));
    }
    if keys.is_empty() {
        return Err("the JWKS holds no RSA (RS256) or P-256 (ES256) signing key".to_owned());
    }
    if keys.len() > 1 && keys.contains_key(&None) {
        return Err("with several keys, every key needs a kid".to_owned());
    }
    Ok(keys)
}

/// RS256 for an RSA key, ES256 for a P-256 key, when the key's own `alg`
/// (if any) says the same.
fn jwk_algorithm(jwk: &jsonwebtoken::jwk::Jwk) -> Option<Algorithm> {
    let algorithm = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            Algorithm::ES256
        }
        _ => return None,
    };
    use jsonwebtoken::jwk::KeyAlgorithm;
    match (algorithm, jwk.common.key_algorithm) {
        (_, None)
        | (Algorithm::RS256, Some(KeyAlgorithm::RS256))
        | (Algorithm::ES256, Some(KeyAlgorithm::ES256)) => Some(algorithm),
        _ => None,
    }
}

/// The token's header when it is valid JSON text throughout: RFC 7519
/// §7.2 requires it, and jsonwebtoken's header parse skips the members it
/// does not read without checking them.
fn header_json(token: &str) -> Option<serde_json::Value> {
    use base64::Engine;
    let header = token.split('.').next().unwrap_or_default();
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .ok()?;
    serde_json::from_slice(&json).ok()
}

fn reason(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::ExpiredSignature => "token expired",
        ErrorKind::ImmatureSignature => "token not yet valid (nbf)",
        ErrorKind::InvalidSignature => "invalid token signature",
        ErrorKind::InvalidAudience => "token audience is not this registry",
        ErrorKind::InvalidIssuer => "token issuer is not trusted",
        ErrorKind::InvalidAlgorithm => "unexpected signing algorithm",
        ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
            "exp" => "token lacks the exp claim",
            "sub" => "token lacks the sub claim",
            "aud" => "token lacks the aud claim",
            "iss" => "token lacks the iss claim",
            _ => "token lacks a required claim",
        },
        ErrorKind::Json(_) => "token claims are not valid JSON",
        ErrorKind::InvalidClaimFormat(_) => "token has a registered claim in the wrong form",
        _ => "invalid token",
    }
}

fn unauthenticated(reason: &str) -> Status {
    Status::unauthenticated(reason)
}

/// The tower layer that authenticates every call.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    authenticator: Arc<Authenticator>,
    limits: Option<Arc<TenantLimits>>,
}

impl AuthLayer {
    /// A layer checking calls with `authenticator`, and each tenant's
    /// calls against `rate` (`None`: no limit).
    pub fn new(authenticator: Arc<Authenticator>, rate: Option<TenantRate>) -> Self {
        Self {
            authenticator,
            limits: rate.map(|rate| Arc::new(TenantLimits::new(rate))),
        }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Authenticated<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authenticated {
            inner,
            authenticator: Arc::clone(&self.authenticator),
            limits: self.limits.clone(),
        }
    }
}

/// A service behind [`AuthLayer`].
#[derive(Debug, Clone)]
pub struct Authenticated<S> {
    inner: S,
    authenticator: Arc<Authenticator>,
    limits: Option<Arc<TenantLimits>>,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for Authenticated<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: http_body::Body + Unpin + Send + 'static,
    B::Data: Send,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The ready service answers this call; a fresh clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let method = request.uri().path().to_owned();
        if is_public(&method) {
            return Box::pin(inner.call(request));
        }
        // Two credentials are ambiguous: which one would the call act as?
        let repeated = request
            .headers()
            .get_all(http::header::AUTHORIZATION)
            .iter()
            .nth(1)
            .is_some();
        if repeated {
            let status = unauthenticated("more than one authorization header: send exactly one");
            return Box::pin(async move { refused(&method, request, status).await });
        }
        let authorization = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok());
        // The per-RPC span (ops::rpc) is current here.
        let span = tracing::Span::current();
        match self.authenticator.admit(&method, authorization) {
            Ok(identity) => match within_rate(self.limits.as_deref(), identity) {
                Ok(identity) => {
                    admitted(&span, &mut request, identity);
                    Box::pin(inner.call(request))
                }
                Err(status) => Box::pin(async move { refused(&method, request, status).await }),
            },
            Err(status) => match self.authenticator.may_refresh_for(authorization) {
                // The provider may have rotated its keys: fetch them (at
                // most once per minimum interval for all callers together)
                // and try once more.
                Some(remote) => {
                    let remote = Arc::clone(remote);
                    let authenticator = Arc::clone(&self.authenticator);
                    let limits = self.limits.clone();
                    let authorization = authorization.map(str::to_owned);
                    Box::pin(async move {
                        let retried = if remote.refresh_for_unknown_kid().await {
                            authenticator.admit(&method, authorization.as_deref())
                        } else {
                            Err(status)
                        };
                        match retried.and_then(|identity| within_rate(limits.as_deref(), identity))
                        {
                            Ok(identity) => {
                                admitted(&span, &mut request, identity);
                                inner.call(request).await
                            }
                            Err(status) => refused(&method, request, status).await,
                        }
                    })
                }
                None => Box::pin(async move { refused(&method, request, status).await }),
            },
        }
    }
}

/// `identity`, when its tenant is within its rate (or no rate is set).
fn within_rate(limits: Option<&TenantLimits>, identity: Identity) -> Result<Identity, Status> {
    match limits {
        Some(limits) => limits.take_call(&identity.caller.tenant).map(|()| identity),
        None => Ok(identity),
    }
}

/// Hands the caller to the services.
fn admitted<B>(span: &tracing::Span, request: &mut http::Request<B>, identity: Identity) {
    span.record("tenant", identity.caller.tenant.as_str());
    if identity.roles.contains(&Role::PlatformOperator) {
        request.extensions_mut().insert(PlatformOperator);
    }
    if identity.roles.contains(&Role::Admin) {
        request.extensions_mut().insert(TenantAdmin);
    }
    request.extensions_mut().insert(identity.caller);
}

/// Answers a refused call, after reading its body off.
async fn refused<B, E>(
    method: &str,
    request: http::Request<B>,
    status: Status,
) -> Result<http::Response<tonic::body::Body>, E>
where
    B: http_body::Body + Unpin + Send + 'static,
    B::Data: Send,
{
    // At DEBUG: a flood of refused calls must not flood the log (ops::rpc
    // logs refusals at INFO at most once a second).
    tracing::debug!(%method, code = ?status.code(), reason = status.message(), "call refused");
    ops::rpc::read_off(request.into_body()).await;
    Ok(status.into_http())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"unit-test-secret-unit-test-secret-0123";

    fn authenticator(issuer: Option<&str>, audience: Option<&str>) -> Authenticator {
        Authenticator::new(
            &KeySource::Hs256(zeroize::Zeroizing::new(SECRET.to_vec())),
            Expectations {
                issuer: issuer.map(str::to_owned),
                audience: audience.map(str::to_owned),
                ..Expectations::default()
            },
            "test",
        )
        .expect("authenticator")
    }

    fn token(claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET),
        )
        .expect("sign")
    }

    /// Found by the `jwt_claims` fuzz target: a token without `iss` (or
    /// `aud`) passed although an issuer (audience) was configured.
    #[test]
    fn a_configured_issuer_and_audience_are_required_not_only_checked() {
        let now = jsonwebtoken::get_current_timestamp();
        let exp = now + 600;
        let checked = authenticator(Some("https://issuer.test"), Some("registry"));
        let full = serde_json::json!({"sub": "a", "tenant": "t", "roles": ["viewer"], "exp": exp,
            "iat": now, "iss": "https://issuer.test", "aud": "registry"});
        assert!(checked.verify(&token(full.clone())).is_ok());
        for missing in ["iss", "aud"] {
            let mut claims = full.clone();
            claims.as_object_mut().expect("object").remove(missing);
            let refused = checked.verify(&token(claims)).expect_err(missing);
            assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{missing}");
        }
        // Without expectations, neither claim is needed.
        let open = authenticator(None, None);
        let bare = serde_json::json!({"sub": "a", "tenant": "t", "exp": exp, "iat": now});
        assert!(open.verify(&token(bare)).is_ok());
    }

    #[test]
    fn a_token_must_carry_iat_and_live_at_most_the_maximum() {
        let now = jsonwebtoken::get_current_timestamp();
        let checked = authenticator(None, None);
        let day = DEFAULT_MAX_LIFETIME_SECONDS;
        let claims = |iat: Option<u64>, exp: u64| {
            let mut claims = serde_json::json!({"sub": "a", "tenant": "t", "exp": exp});
            if let Some(iat) = iat {
                claims["iat"] = serde_json::json!(iat);
            }
            token(claims)
        };
        assert!(checked.verify(&claims(Some(now), now + day)).is_ok());
        for (what, token, reason) in [
            ("no iat", claims(None, now + 60), "lacks the iat claim"),
            (
                "a day and a second",
                claims(Some(now), now + day + 1),
                "exceeds",
            ),
            (
                "iat in the future",
                claims(Some(now + 3600), now + 7200),
                "in the future",
            ),
        ] {
            let refused = checked.verify(&token).expect_err(what);
            assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{what}");
            assert!(refused.message().contains(reason), "{what}: {refused:?}");
        }
    }

    /// A role map may name `platform-operator`, but only the configured
    /// subjects hold it, as with the registry's own role names.
    #[test]
    fn a_mapped_platform_operator_role_still_needs_a_listed_subject() {
        let map =
            ClaimMapping::parse_role_map(&["ops=platform-operator".to_owned()]).expect("role map");
        let mapped = authenticator(None, None)
            .with_claims(ClaimMapping {
                role_map: Some(map),
                ..ClaimMapping::default()
            })
            .with_platform_operators(vec!["operator".to_owned()]);
        let now = jsonwebtoken::get_current_timestamp();
        let token_of = |sub: &str| {
            token(
                serde_json::json!({"sub": sub, "tenant": "t", "roles": ["ops"],
                "exp": now + 60, "iat": now}),
            )
        };
        let method = "/agentregistry.v1.KeyService/RetireKeyVersion";
        let bearer = |sub: &str| format!("Bearer {}", token_of(sub));
        assert!(mapped.admit(method, Some(&bearer("operator"))).is_ok());
        let refused = mapped
            .admit(method, Some(&bearer("someone")))
            .expect_err("not a listed subject");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    }

    #[test]
    fn a_kid_must_name_a_configured_key_even_when_there_is_one() {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = serde_json::json!({"sub": "a", "tenant": "t", "exp": now + 60, "iat": now});
        let with_kid = |kid: Option<&str>| {
            let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
            header.kid = kid.map(str::to_owned);
            jsonwebtoken::encode(
                &header,
                &claims,
                &jsonwebtoken::EncodingKey::from_secret(SECRET),
            )
            .expect("sign")
        };
        let unnamed = authenticator(None, None);
        assert!(unnamed.verify(&with_kid(None)).is_ok());
        let refused = unnamed.verify(&with_kid(Some("other"))).expect_err("kid");
        assert_eq!(refused.message(), "unknown signing key (kid)");

        let named = Authenticator::new(
            &KeySource::Hs256(zeroize::Zeroizing::new(SECRET.to_vec())),
            Expectations {
                key_id: Some("k1".to_owned()),
                ..Expectations::default()
            },
            "test",
        )
        .expect("authenticator");
        assert!(named.verify(&with_kid(Some("k1"))).is_ok());
        assert!(named.verify(&with_kid(None)).is_ok());
        assert!(named.verify(&with_kid(Some("k2"))).is_err());
    }

    /// Direction and invisible characters are refused wherever they stand;
    /// other non-ASCII text, joiners included, passes.
    #[test]
    fn a_name_that_could_show_as_another_is_refused() {
        for c in [
            '\u{061C}', '\u{200B}', '\u{200E}', '\u{200F}', '\u{2028}', '\u{2029}', '\u{202A}',
            '\u{202E}', '\u{2066}', '\u{2069}', '\u{FEFF}',
        ] {
            for name in [format!("{c}acme"), format!("ac{c}me"), format!("acme{c}")] {
                assert_eq!(
                    check_identity_name(&name),
                    Err("holds a text-direction or invisible character".to_owned()),
                    "U+{:04X}",
                    u32::from(c)
                );
            }
        }
        for name in [
            "é🤖",
            "\u{0645}\u{0627}\u{0647}",
            "👨\u{200D}👩",
            "ab\u{200C}c",
            "a b",
        ] {
            assert_eq!(check_identity_name(name), Ok(()), "{name:?}");
        }
        assert_eq!(
            check_identity_name("\u{85}acme"),
            Err("holds a control character".to_owned())
        );
    }

    /// `token` mints no subject or tenant the registry would refuse.
    #[test]
    fn the_token_subcommand_refuses_names_the_registry_would() {
        let mint = |subject: String, tenant: String| {
            let args = crate::config::TokenArgs {
                subject,
                tenant,
                roles: vec!["viewer".to_owned()],
                ttl_seconds: 60,
            };
            mint_hs256(
                b"0123456789abcdef0123456789abcdef",
                &Expectations::default(),
                &args,
            )
        };
        let widest = "w".repeat(MAX_IDENTITY_NAME_BYTES);
        assert!(mint(widest.clone(), widest.clone()).is_ok());
        for (subject, tenant, field) in [
            (format!("{widest}w"), "acme".to_owned(), "subject"),
            ("ops".to_owned(), format!("{widest}w"), "tenant"),
            ("ops\n".to_owned(), "acme".to_owned(), "subject"),
        ] {
            match mint(subject, tenant) {
                Err(Error::BadRequest(violations)) => {
                    assert_eq!(violations.len(), 1);
                    assert_eq!(violations[0].field, field);
                    assert!(violations[0].description.contains("would refuse"));
                }
                other => panic!("{field}: {other:?}"),
            }
        }
    }
}
