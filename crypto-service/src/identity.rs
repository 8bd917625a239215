//! Who is calling, and what they may call.
//!
//! crypto-service answers only callers it can name. A caller is named by
//! the transport it arrives on:
//!
//! - mutual TLS: the DNS names of its client certificate (the handshake has
//!   already proved the configured client CA signed it);
//! - a unix socket: the peer's uid, from the kernel (`SO_PEERCRED`);
//! - plaintext TCP behind a mesh (`--mesh-mtls`): the URI and DNS names in
//!   the `x-forwarded-client-cert` header the mesh's proxy sets (its last
//!   element: the one the nearest proxy added);
//! - plaintext loopback TCP or a unix socket in development mode
//!   (`--insecure-dev-callers`): anyone, with every role.
//!
//! Each configured name ([`Principal`]: `dns:…`, `uid:…`, `uri:…`) holds a
//! [`Role`], and [`PERMISSIONS`] says which roles may call each method. The
//! [`GateLayer`] wraps only the crypto service, so health checks and
//! reflection stay open; a method missing from the table is denied. The
//! admitted [`Caller`] rides in the request's extensions for the handlers'
//! audit lines.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use rustls_pki_types::{CertificateDer, ServerName};
use tonic::codegen::http;
use tonic::server::NamedService;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo, UdsConnectInfo};

use crate::error::Error;

/// The header a mesh proxy (Envoy, Istio) uses to forward the verified
/// client certificate of a connection it terminated.
pub const FORWARDED_CLIENT_CERT: &str = "x-forwarded-client-cert";

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// registry-service: Encrypt, Decrypt, their batches, Rewrap,
    /// GetKeyInfo, RetireKeyVersion (which the registry calls only after
    /// checking that no stored value uses the version).
    Registry,
    /// A platform operator: ImportFernet and GetKeyInfo.
    Operator,
}

impl Role {
    /// The setting that lists this role's callers.
    pub fn setting(self) -> &'static str {
        match self {
            Self::Registry => "CRYPTO_REGISTRY_CLIENTS",
            Self::Operator => "CRYPTO_OPERATOR_CLIENTS",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Registry => "registry",
            Self::Operator => "operator",
        }
    }
}

/// Each `CryptoService` method and the roles that may call it. Nothing
/// else is callable: retiring a key version is the registry's alone, so
/// its in-use guard is the only way to retire.
pub const PERMISSIONS: &[(&str, &[Role])] = &[
    ("Encrypt", &[Role::Registry]),
    ("Decrypt", &[Role::Registry]),
    ("EncryptBatch", &[Role::Registry]),
    ("DecryptBatch", &[Role::Registry]),
    ("Rewrap", &[Role::Registry]),
    ("GetKeyInfo", &[Role::Registry, Role::Operator]),
    ("RetireKeyVersion", &[Role::Registry]),
    ("ImportFernet", &[Role::Operator]),
];

/// One configured caller name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// `dns:NAME`: a client certificate valid for NAME (mutual TLS), or a
    /// `DNS=` name the mesh forwarded.
    Dns(String),
    /// `uid:N`: a unix socket peer running as uid N.
    Uid(u32),
    /// `uri:URI`: a `URI=` name the mesh forwarded (a SPIFFE id).
    Uri(String),
}

impl Principal {
    /// Parses `dns:NAME`, `uid:N` or `uri:URI`; `setting` names the list
    /// for the error.
    pub fn parse(setting: &str, text: &str) -> Result<Self, Error> {
        let text = text.trim();
        let problem = |what: &str| Error::config(setting, format!("{text:?}: {what}"));
        match text.split_once(':') {
            Some(("dns", name)) => {
                ServerName::try_from(name.to_owned()).map_err(|_| problem("is not a DNS name"))?;
                Ok(Self::Dns(name.to_ascii_lowercase()))
            }
            Some(("uid", uid)) => uid
                .parse()
                .map(Self::Uid)
                .map_err(|_| problem("a uid is a whole number")),
            Some(("uri", uri)) if !uri.is_empty() && !uri.contains([',', ';', '"']) => {
                Ok(Self::Uri(uri.to_owned()))
            }
            Some(("uri", _)) => Err(problem("is not a URI")),
            _ => Err(problem("expected dns:NAME, uid:N or uri:URI")),
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dns(name) => write!(f, "dns:{name}"),
            Self::Uid(uid) => write!(f, "uid:{uid}"),
            Self::Uri(uri) => write!(f, "uri:{uri}"),
        }
    }
}

/// How the listener's callers can be named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Mutual TLS: certificate DNS names.
    MutualTls,
    /// A unix socket: peer uids.
    UnixSocket,
    /// Plaintext TCP behind a mesh: the forwarded client certificate.
    Mesh,
    /// Plaintext loopback TCP: nobody, unless in development mode.
    Loopback,
}

impl Transport {
    fn accepts(self, principal: &Principal) -> bool {
        matches!(
            (self, principal),
            (Self::MutualTls, Principal::Dns(_))
                | (Self::UnixSocket, Principal::Uid(_))
                | (Self::Mesh, Principal::Dns(_) | Principal::Uri(_))
        )
    }

    fn kinds(self) -> &'static str {
        match self {
            Self::MutualTls => "dns: entries (client certificate names)",
            Self::UnixSocket => "uid: entries",
            Self::Mesh => "uri: or dns: entries (the mesh's forwarded client identity)",
            Self::Loopback => "no entries (plaintext TCP names nobody)",
        }
    }
}

/// The validated caller settings: who holds which role, on which
/// transport, and whether development mode admits everyone local.
#[derive(Debug, Clone)]
pub struct Callers {
    transport: Transport,
    granted: Vec<(Principal, Role)>,
    insecure_dev: bool,
}

impl Callers {
    /// Checks that every entry can be recognised on `transport` and that
    /// someone can call at all: without development mode, plaintext
    /// loopback TCP (which names nobody) and empty lists are refused.
    pub fn new(
        transport: Transport,
        registry: Vec<Principal>,
        operator: Vec<Principal>,
        insecure_dev: bool,
    ) -> Result<Self, Error> {
        let granted: Vec<(Principal, Role)> = registry
            .into_iter()
            .map(|p| (p, Role::Registry))
            .chain(operator.into_iter().map(|p| (p, Role::Operator)))
            .collect();
        if let Some((principal, role)) = granted.iter().find(|(p, _)| !transport.accepts(p)) {
            return Err(Error::config(
                role.setting(),
                format!(
                    "{principal} cannot be recognised on this listener, which takes {}",
                    transport.kinds()
                ),
            ));
        }
        if insecure_dev && matches!(transport, Transport::MutualTls | Transport::Mesh) {
            // Behind a mesh every call arrives from the local proxy, so
            // "anyone local" would be anyone at all.
            return Err(Error::config(
                "CRYPTO_INSECURE_DEV_CALLERS",
                "is for plaintext loopback or a unix socket only, not with mutual TLS or \
                 --mesh-mtls, which name their callers",
            ));
        }
        if !insecure_dev {
            if transport == Transport::Loopback {
                return Err(Error::config(
                    "CRYPTO_LISTEN",
                    "plaintext TCP gives no way to tell callers apart: listen on a unix socket \
                     (with uid: entries in CRYPTO_REGISTRY_CLIENTS / CRYPTO_OPERATOR_CLIENTS), \
                     configure mutual TLS (CRYPTO_TLS_*), pass --mesh-mtls behind a mesh that \
                     forwards client identities, or pass --insecure-dev-callers for development",
                ));
            }
            if !granted.iter().any(|(_, role)| *role == Role::Registry) {
                return Err(Error::config(
                    Role::Registry.setting(),
                    format!(
                        "names nobody, so no registry could call: give {}",
                        transport.kinds()
                    ),
                ));
            }
        }
        Ok(Self {
            transport,
            granted,
            insecure_dev,
        })
    }

    /// Whether development mode admits every local caller.
    pub fn insecure_dev(&self) -> bool {
        self.insecure_dev
    }

    /// Names the caller of `request` and the roles it holds.
    fn identify<B>(&self, request: &http::Request<B>) -> Caller {
        let extensions = request.extensions();
        let named = match self.transport {
            Transport::MutualTls => extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(TlsConnectInfo::peer_certs)
                .and_then(|certs| self.by_certificate(&certs)),
            Transport::UnixSocket => extensions
                .get::<UdsConnectInfo>()
                .and_then(|info| info.peer_cred)
                .map(|cred| self.by_principal(Principal::Uid(cred.uid()))),
            Transport::Mesh => request
                .headers()
                .get(FORWARDED_CLIENT_CERT)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| self.by_forwarded(value)),
            Transport::Loopback => None,
        };
        let named = named.filter(|caller| !caller.roles.is_empty());
        if let Some(caller) = named {
            return caller;
        }
        let peer = peer_description(extensions);
        if self.insecure_dev && self.is_local(extensions) {
            return Caller {
                identity: format!("dev:{peer}"),
                roles: vec![Role::Registry, Role::Operator],
            };
        }
        Caller {
            identity: unnamed(self.transport, extensions, &peer),
            roles: Vec::new(),
        }
    }

    fn roles_of(&self, principal: &Principal) -> Vec<Role> {
        let mut roles: Vec<Role> = self
            .granted
            .iter()
            .filter(|(p, _)| p == principal)
            .map(|(_, role)| *role)
            .collect();
        roles.dedup();
        roles
    }

    fn by_principal(&self, principal: Principal) -> Caller {
        Caller {
            roles: self.roles_of(&principal),
            identity: principal.to_string(),
        }
    }

    fn by_certificate(&self, certs: &[CertificateDer<'static>]) -> Option<Caller> {
        let cert = webpki::EndEntityCert::try_from(certs.first()?).ok()?;
        let mut matched: Option<Caller> = None;
        for (principal, role) in &self.granted {
            let Principal::Dns(name) = principal else {
                continue;
            };
            let Ok(server_name) = ServerName::try_from(name.as_str()) else {
                continue;
            };
            if cert.verify_is_valid_for_subject_name(&server_name).is_ok() {
                let caller = matched.get_or_insert_with(|| Caller {
                    identity: principal.to_string(),
                    roles: Vec::new(),
                });
                if !caller.roles.contains(role) {
                    caller.roles.push(*role);
                }
            }
        }
        matched.or(Some(Caller {
            identity: "tls:unlisted-certificate".to_owned(),
            roles: Vec::new(),
        }))
    }

    fn by_forwarded(&self, header: &str) -> Option<Caller> {
        let names = forwarded_names(header);
        let mut first_unlisted = None;
        for principal in names {
            let caller = self.by_principal(principal);
            if !caller.roles.is_empty() {
                return Some(caller);
            }
            first_unlisted.get_or_insert(caller);
        }
        first_unlisted
    }

    fn is_local(&self, extensions: &http::Extensions) -> bool {
        match self.transport {
            Transport::UnixSocket => true,
            Transport::Loopback => extensions
                .get::<TcpConnectInfo>()
                .and_then(TcpConnectInfo::remote_addr)
                .is_some_and(|addr| is_loopback(addr.ip())),
            Transport::MutualTls | Transport::Mesh => false,
        }
    }
}

/// The admitted caller of one request: how it was named, and its roles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// `dns:…`, `uid:…`, `uri:…`, or `dev:<peer>` in development mode.
    pub identity: String,
    /// What it may do.
    pub roles: Vec<Role>,
}

impl Caller {
    /// The caller a handler sees when no gate ran (unit tests of handlers).
    pub fn unknown() -> Self {
        Self {
            identity: "unknown".to_owned(),
            roles: Vec::new(),
        }
    }

    fn may_call(&self, method: &str) -> Result<(), Vec<Role>> {
        let allowed = PERMISSIONS
            .iter()
            .find(|(name, _)| *name == method)
            .map_or(&[][..], |(_, roles)| *roles);
        if allowed.iter().any(|role| self.roles.contains(role)) {
            Ok(())
        } else {
            Err(allowed.to_vec())
        }
    }
}

/// The tower layer that admits or refuses every call to the crypto
/// service.
#[derive(Debug, Clone)]
pub struct GateLayer {
    callers: Arc<Callers>,
    refusals: Arc<RefusalLog>,
}

impl GateLayer {
    /// A gate over `callers`.
    pub fn new(callers: Callers) -> Self {
        Self {
            callers: Arc::new(callers),
            refusals: Arc::new(RefusalLog::default()),
        }
    }
}

impl<S> tower::Layer<S> for GateLayer {
    type Service = Gate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Gate {
            inner,
            callers: Arc::clone(&self.callers),
            refusals: Arc::clone(&self.refusals),
        }
    }
}

/// The crypto service behind its gate.
#[derive(Debug, Clone)]
pub struct Gate<S> {
    inner: S,
    callers: Arc<Callers>,
    refusals: Arc<RefusalLog>,
}

/// At most one refusal line per second: a caller hammering the service
/// must not flood the log (every refusal is still counted in the gRPC
/// metrics, code PERMISSION_DENIED).
#[derive(Debug, Default)]
struct RefusalLog {
    /// The second (since the epoch) of the last line written, plus one; 0
    /// before the first.
    last_second: AtomicU64,
    /// Refusals not logged since that line.
    suppressed: AtomicU64,
}

impl RefusalLog {
    /// `Some(refusals not logged since the last line)` when this refusal
    /// may be logged.
    fn admit(&self) -> Option<u64> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs())
            + 1;
        let last = self.last_second.load(Ordering::Relaxed);
        if last != now
            && self
                .last_second
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

impl<S: NamedService> NamedService for Gate<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tower::Service<http::Request<B>> for Gate<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures_util::future::Either<
        S::Future,
        std::future::Ready<Result<Self::Response, Self::Error>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let method = request
            .uri()
            .path()
            .rsplit_once('/')
            .map_or("", |(_, method)| method)
            .to_owned();
        let caller = self.callers.identify(&request);
        match caller.may_call(&method) {
            Ok(()) => {
                request.extensions_mut().insert(caller);
                futures_util::future::Either::Left(self.inner.call(request))
            }
            Err(allowed) => {
                if let Some(suppressed) = self.refusals.admit() {
                    tracing::warn!(
                        caller = %caller.identity,
                        method = %bounded_method(&method),
                        refusals_not_logged = suppressed,
                        "refused a caller without the role for this method"
                    );
                }
                let error = Error::PermissionDenied {
                    caller: caller.identity,
                    method: bounded_method(&method),
                    needs: describe_roles(&allowed),
                };
                let status = tonic::Status::from(error);
                futures_util::future::Either::Right(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

/// A method name from the request path, cut short and kept printable (an
/// unknown path is the client's text).
fn bounded_method(method: &str) -> String {
    if PERMISSIONS.iter().any(|(name, _)| *name == method) {
        method.to_owned()
    } else {
        "unknown method".to_owned()
    }
}

fn describe_roles(roles: &[Role]) -> String {
    match roles {
        [] => "no role: it is not a method of this service".to_owned(),
        _ => roles
            .iter()
            .map(|role| format!("the {} role ({})", role.name(), role.setting()))
            .collect::<Vec<_>>()
            .join(" or "),
    }
}

fn peer_description(extensions: &http::Extensions) -> String {
    if let Some(addr) = extensions
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
    {
        return addr.to_string();
    }
    if let Some(cred) = extensions.get::<UdsConnectInfo>().and_then(|i| i.peer_cred) {
        return format!("uid:{}", cred.uid());
    }
    "unknown peer".to_owned()
}

fn unnamed(transport: Transport, extensions: &http::Extensions, peer: &str) -> String {
    match transport {
        Transport::UnixSocket => extensions
            .get::<UdsConnectInfo>()
            .and_then(|info| info.peer_cred)
            .map_or_else(
                || "unix:unknown-uid".to_owned(),
                |c| format!("uid:{}", c.uid()),
            ),
        Transport::MutualTls => "tls:unlisted-certificate".to_owned(),
        Transport::Mesh => format!("mesh:no-listed-forwarded-identity from {peer}"),
        Transport::Loopback => format!("anonymous:{peer}"),
    }
}

/// The URI and DNS names of the last element of an
/// `x-forwarded-client-cert` value: elements are separated by commas,
/// pairs by semicolons, and values may be double-quoted (with `\"`
/// inside), as Envoy writes them.
pub fn forwarded_names(header: &str) -> Vec<Principal> {
    let last = split_unquoted(header, ',').pop().unwrap_or_default();
    split_unquoted(&last, ';')
        .into_iter()
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            let value = unquote(value.trim());
            match key.trim().to_ascii_lowercase().as_str() {
                "uri" if !value.is_empty() => Some(Principal::Uri(value)),
                "dns" if !value.is_empty() => Some(Principal::Dns(value.to_ascii_lowercase())),
                _ => None,
            }
        })
        .collect()
}

fn split_unquoted(text: &str, separator: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut quoted = false;
    let mut escaped = false;
    for c in text.chars() {
        let current = parts.last_mut();
        let Some(current) = current else { break };
        if escaped {
            escaped = false;
        } else if c == '\\' && quoted {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c == separator && !quoted {
            parts.push(String::new());
            continue;
        }
        current.push(c);
    }
    parts
}

fn unquote(value: &str) -> String {
    let inner = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value);
    inner.replace("\\\"", "\"")
}

/// Whether `ip` is a loopback address (IPv4-mapped IPv6 included).
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(v6.is_loopback(), |v4| v4.is_loopback()),
        IpAddr::V4(v4) => v4.is_loopback(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principals(entries: &[&str]) -> Vec<Principal> {
        entries
            .iter()
            .map(|e| Principal::parse("TEST", e).expect("entry"))
            .collect()
    }

    #[test]
    fn entries_parse_and_bad_ones_name_the_setting() {
        assert_eq!(
            principals(&[
                "dns:Registry.Example",
                "uid:1000",
                "uri:spiffe://c/ns/a/sa/r"
            ]),
            [
                Principal::Dns("registry.example".to_owned()),
                Principal::Uid(1000),
                Principal::Uri("spiffe://c/ns/a/sa/r".to_owned())
            ]
        );
        for bad in ["registry", "uid:me", "dns:not a name", "uri:", "tcp:1"] {
            let error = Principal::parse("CRYPTO_REGISTRY_CLIENTS", bad)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                error.starts_with("CRYPTO_REGISTRY_CLIENTS: "),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn the_start_up_checks_refuse_callers_nobody_can_be() {
        let refused = |transport, registry: &[&str], dev| {
            Callers::new(transport, principals(registry), Vec::new(), dev)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(
            refused(Transport::Loopback, &[], false).starts_with("CRYPTO_LISTEN: plaintext TCP")
        );
        assert_eq!(refused(Transport::Loopback, &[], true), "");
        assert!(
            refused(Transport::UnixSocket, &["dns:registry.test"], false)
                .contains("cannot be recognised on this listener")
        );
        assert!(
            refused(Transport::UnixSocket, &[], false)
                .starts_with("CRYPTO_REGISTRY_CLIENTS: names nobody")
        );
        assert_eq!(refused(Transport::UnixSocket, &["uid:7"], false), "");
        assert!(refused(Transport::MutualTls, &["uid:7"], false).contains("dns: entries"));
        assert!(
            refused(Transport::Mesh, &["uri:spiffe://c/r"], true)
                .starts_with("CRYPTO_INSECURE_DEV_CALLERS: is for plaintext loopback")
        );
    }

    #[test]
    fn the_permission_table_keeps_retire_and_import_apart() {
        let registry = Caller {
            identity: "uid:1".to_owned(),
            roles: vec![Role::Registry],
        };
        let operator = Caller {
            identity: "uid:2".to_owned(),
            roles: vec![Role::Operator],
        };
        for method in [
            "Encrypt",
            "Decrypt",
            "EncryptBatch",
            "DecryptBatch",
            "Rewrap",
            "GetKeyInfo",
            "RetireKeyVersion",
        ] {
            assert!(registry.may_call(method).is_ok(), "{method}");
        }
        assert!(registry.may_call("ImportFernet").is_err());
        assert!(operator.may_call("ImportFernet").is_ok());
        assert!(operator.may_call("GetKeyInfo").is_ok());
        for method in [
            "Encrypt",
            "Decrypt",
            "Rewrap",
            "RetireKeyVersion",
            "Unknown",
        ] {
            assert!(operator.may_call(method).is_err(), "{method}");
        }
        assert!(Caller::unknown().may_call("GetKeyInfo").is_err());
    }

    #[test]
    fn refusals_are_logged_once_per_second_with_the_count_in_between() {
        let log = RefusalLog::default();
        assert_eq!(log.admit(), Some(0));
        // The rest of this second (the test runs far inside one).
        let logged = (0..1000).filter_map(|_| log.admit()).count();
        assert!(logged <= 1, "{logged} lines for 1000 refusals");
    }

    #[test]
    fn the_forwarded_identity_is_the_last_elements_names() {
        let header = "By=spiffe://c/ns/a/sa/crypto;URI=spiffe://c/ns/a/sa/evil,\
                      By=spiffe://c/ns/a/sa/crypto;Hash=ab;Subject=\"CN=x,O=y\";\
                      URI=spiffe://c/ns/a/sa/registry;DNS=Registry.Test";
        assert_eq!(
            forwarded_names(header),
            [
                Principal::Uri("spiffe://c/ns/a/sa/registry".to_owned()),
                Principal::Dns("registry.test".to_owned())
            ]
        );
        assert!(forwarded_names("Hash=ab").is_empty());
    }
}
