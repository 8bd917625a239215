//! Start-up configuration: flags and environment variables, validated once
//! into typed settings and a keyring.
//!
//! Key material is read from the environment only (never from flags, which
//! other users can see in the process list), or from files for mounted
//! secrets. Every problem becomes one [`Error::Config`] line that names the
//! setting and never its value.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use clap::Parser;
use serde::Deserialize;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::Error;
use crate::fernet::FernetKey;
use crate::identity::{Callers, Principal, Transport};
use crate::keyring::{KEY_LEN, KeyMaterial, Keyring};

/// Flags of the `crypto-service` binary. Each flag also reads the
/// environment variable shown in `--help`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "crypto-service",
    version,
    about = "agentregistry crypto-service: the only process that holds the master key."
)]
pub struct Args {
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Where to serve gRPC: HOST:PORT, or unix:/path/to/socket.
    #[arg(long, env = "CRYPTO_LISTEN", default_value = "127.0.0.1:50061")]
    pub listen: ListenAddress,
    /// PEM certificate chain of this server (enables TLS; needs the key, the
    /// client CA and an allow-list: TLS here is always mutual).
    #[arg(long, env = "CRYPTO_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of this server. Secret.
    #[arg(long, env = "CRYPTO_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// PEM CA certificate(s) that sign client certificates.
    #[arg(long, env = "CRYPTO_TLS_CLIENT_CA_FILE")]
    pub tls_client_ca_file: Option<PathBuf>,
    /// Callers with the registry role (Encrypt, Decrypt, batches, Rewrap,
    /// GetKeyInfo, RetireKeyVersion), comma-separated: `dns:NAME` (a client
    /// certificate name under mutual TLS, or a forwarded `DNS=` name behind
    /// a mesh), `uid:N` (a unix socket peer), `uri:URI` (a forwarded `URI=`
    /// name behind a mesh, such as a SPIFFE id).
    #[arg(long, env = "CRYPTO_REGISTRY_CLIENTS", value_delimiter = ',')]
    pub registry_clients: Vec<String>,
    /// Callers with the operator role (ImportFernet, GetKeyInfo), in the
    /// same form as `--registry-clients`.
    #[arg(long, env = "CRYPTO_OPERATOR_CLIENTS", value_delimiter = ',')]
    pub operator_clients: Vec<String>,
    /// Older form of `--registry-clients` for mutual TLS: bare DNS names,
    /// each the same as a `dns:NAME` registry entry.
    #[arg(long, env = "CRYPTO_ALLOWED_CLIENTS", value_delimiter = ',')]
    pub allowed_clients: Vec<String>,
    /// Allow plaintext on a non-loopback address because a service mesh
    /// provides mutual TLS in front of this process; callers are then named
    /// by the `x-forwarded-client-cert` header the mesh's proxy sets (it
    /// must overwrite any the client sent).
    #[arg(long, env = "CRYPTO_MESH_MTLS")]
    pub mesh_mtls: bool,
    /// Development only: every caller on plaintext loopback TCP or on the
    /// unix socket gets every role (logged as a warning at start); refused
    /// with mutual TLS or `--mesh-mtls`. Without it, plaintext TCP without a
    /// mesh is refused at start.
    #[arg(long, env = "CRYPTO_INSECURE_DEV_CALLERS")]
    pub insecure_dev_callers: bool,
    /// Development mode: without key settings, use a random key that lives
    /// only as long as the process (everything it encrypted is lost on exit).
    #[arg(long, env = "CRYPTO_DEV")]
    pub dev: bool,
    /// A JSON keyring file: {"keys":[{"version":1,"master_secret":"…",
    /// "salt":"…","derivation":"legacy-pbkdf2"},{"version":2,"key":"<base64>"},
    /// {"version":3,"master_secret":"…","salt":"…","derivation":"pbkdf2-v2"}]}.
    /// Secret.
    #[arg(long, env = "ENCRYPTION_KEYRING_FILE")]
    pub keyring_file: Option<PathBuf>,
    /// Largest plaintext accepted, in bytes.
    #[arg(long, env = "CRYPTO_MAX_PLAINTEXT_BYTES", default_value_t = 65_536)]
    pub max_plaintext_bytes: usize,
    /// Largest associated data accepted, in bytes.
    #[arg(long, env = "CRYPTO_MAX_AAD_BYTES", default_value_t = 4_096)]
    pub max_aad_bytes: usize,
    /// Most items in one EncryptBatch, DecryptBatch or Rewrap call.
    #[arg(long, env = "CRYPTO_MAX_BATCH_ITEMS", default_value_t = 1_000)]
    pub max_batch_items: usize,
    /// Largest gRPC request message, in bytes.
    #[arg(long, env = "CRYPTO_MAX_MESSAGE_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_message_bytes: usize,
    /// Seconds in-flight calls get to finish after SIGTERM/SIGINT.
    #[arg(long, env = "CRYPTO_DRAIN_SECONDS", default_value_t = 10)]
    pub drain_seconds: u64,
    /// Where to serve Prometheus metrics over HTTP (`/metrics`); off when
    /// unset.
    #[arg(long, env = "CRYPTO_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    #[command(flatten)]
    pub telemetry: ops::cli::TelemetryArgs,
    #[command(flatten)]
    pub grpc: ops::cli::GrpcArgs,
}

/// Subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Serve gRPC (the default).
    Serve,
    /// Ask the running server (CRYPTO_LISTEN: its TCP port or unix socket)
    /// for its status once: exit 0 only on SERVING. Reads the same settings
    /// as `serve`, for compose healthchecks.
    Healthcheck(HealthcheckCommand),
}

/// Settings of `healthcheck`. Only a server with mutual TLS
/// (CRYPTO_TLS_CERT_FILE) needs the TLS ones: the CA that signed its
/// certificate, the name it is valid for, and a client certificate its
/// client CA signed (the health service admits any such client).
#[derive(Debug, Clone, clap::Args)]
pub struct HealthcheckCommand {
    #[command(flatten)]
    pub check: ops::healthcheck::HealthcheckArgs,
    /// CA certificate that signed the server's certificate (PEM).
    #[arg(long, env = "CRYPTO_HEALTHCHECK_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Client certificate for the check (PEM).
    #[arg(long, env = "CRYPTO_HEALTHCHECK_CERT_FILE")]
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM). Secret.
    #[arg(long, env = "CRYPTO_HEALTHCHECK_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// The DNS name the server's certificate is valid for.
    #[arg(long, env = "CRYPTO_HEALTHCHECK_SERVER_NAME")]
    pub server_name: Option<String>,
}

impl HealthcheckCommand {
    /// Where and how `healthcheck` reaches the server `serve` settings in
    /// `args` describe.
    pub fn target(
        &self,
        args: &Args,
    ) -> Result<(ops::healthcheck::Target, Option<ops::healthcheck::Tls>), Error> {
        let target = match &args.listen {
            ListenAddress::Tcp(address) => ops::healthcheck::Target::Tcp(*address),
            ListenAddress::Unix(path) => ops::healthcheck::Target::Unix(path.clone()),
        };
        if args.tls_cert_file.is_none() {
            return Ok((target, None));
        }
        let required = |setting: &str, value: &Option<PathBuf>| {
            value.as_deref().map(Path::to_path_buf).ok_or_else(|| {
                Error::config(
                    setting,
                    "is required to check a server with mutual TLS (CRYPTO_TLS_CERT_FILE)",
                )
            })
        };
        let ca = required("CRYPTO_HEALTHCHECK_CA_FILE", &self.ca_file)?;
        let cert = required("CRYPTO_HEALTHCHECK_CERT_FILE", &self.cert_file)?;
        let key = required("CRYPTO_HEALTHCHECK_KEY_FILE", &self.key_file)?;
        let server_name = self.server_name.clone().ok_or_else(|| {
            Error::config(
                "CRYPTO_HEALTHCHECK_SERVER_NAME",
                "is required to check a server with mutual TLS (CRYPTO_TLS_CERT_FILE)",
            )
        })?;
        let tls = ops::healthcheck::Tls {
            ca_pem: read_file("CRYPTO_HEALTHCHECK_CA_FILE", &ca)?,
            server_name,
            identity: Some((
                read_file("CRYPTO_HEALTHCHECK_CERT_FILE", &cert)?,
                read_file("CRYPTO_HEALTHCHECK_KEY_FILE", &key)?,
            )),
        };
        Ok((target, Some(tls)))
    }
}

/// A TCP socket address or a unix socket path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddress {
    /// `HOST:PORT`.
    Tcp(SocketAddr),
    /// `unix:/path`.
    Unix(PathBuf),
}

impl FromStr for ListenAddress {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.strip_prefix("unix:") {
            Some("") => Err("unix: needs a socket path".to_owned()),
            Some(path) => Ok(Self::Unix(PathBuf::from(path))),
            None => text
                .parse()
                .map(Self::Tcp)
                .map_err(|_| "expected HOST:PORT (an IP address) or unix:/path".to_owned()),
        }
    }
}

impl fmt::Display for ListenAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(addr) => write!(f, "{addr}"),
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// Validated server settings (everything but the keyring).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where to serve.
    pub listen: ListenAddress,
    /// Mutual TLS, when configured.
    pub tls: Option<TlsSettings>,
    /// Size limits.
    pub limits: Limits,
    /// How long in-flight calls may drain at shutdown.
    pub drain: Duration,
    /// Protective limits of the gRPC server.
    pub grpc: ops::cli::GrpcArgs,
    /// The Python platform's Fernet key, which `ImportFernet` decrypts with;
    /// `None` (the default) refuses imports. Set from [`Args::legacy_key`].
    pub legacy_key: Option<Arc<FernetKey>>,
    /// Who may call what.
    pub callers: Callers,
}

/// Mutual TLS material (who may call is in [`Callers`]).
#[derive(Clone)]
pub struct TlsSettings {
    /// Server certificate chain, PEM.
    pub cert_pem: Vec<u8>,
    /// Server private key, PEM.
    pub key_pem: Zeroizing<Vec<u8>>,
    /// Client CA certificates, PEM.
    pub client_ca_pem: Vec<u8>,
}

impl fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSettings")
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// Request size limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest plaintext, bytes.
    pub max_plaintext_bytes: usize,
    /// Largest associated data, bytes.
    pub max_aad_bytes: usize,
    /// Most items per batch call.
    pub max_batch_items: usize,
    /// Largest request message, bytes.
    pub max_message_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_plaintext_bytes: 65_536,
            max_aad_bytes: 4_096,
            max_batch_items: 1_000,
            max_message_bytes: 4 * 1024 * 1024,
        }
    }
}

impl Args {
    /// Validates the transport and limit flags into [`Settings`].
    pub fn settings(&self) -> Result<Settings, Error> {
        let tls = self.tls_settings()?;
        check_transport(&self.listen, tls.is_some(), self.mesh_mtls)?;
        let callers = self.callers(tls.is_some())?;
        for (setting, value) in [
            ("CRYPTO_MAX_PLAINTEXT_BYTES", self.max_plaintext_bytes),
            ("CRYPTO_MAX_BATCH_ITEMS", self.max_batch_items),
            ("CRYPTO_MAX_MESSAGE_BYTES", self.max_message_bytes),
        ] {
            if value == 0 {
                return Err(Error::config(setting, "must be at least 1"));
            }
        }
        Ok(Settings {
            listen: self.listen.clone(),
            tls,
            limits: Limits {
                max_plaintext_bytes: self.max_plaintext_bytes,
                max_aad_bytes: self.max_aad_bytes,
                max_batch_items: self.max_batch_items,
                max_message_bytes: self.max_message_bytes,
            },
            drain: Duration::from_secs(self.drain_seconds),
            grpc: self.grpc.clone(),
            legacy_key: None,
            callers,
        })
    }

    /// The caller settings, checked against the listener.
    fn callers(&self, tls: bool) -> Result<Callers, Error> {
        let transport = match (&self.listen, tls, self.mesh_mtls) {
            (ListenAddress::Unix(_), _, _) => Transport::UnixSocket,
            (ListenAddress::Tcp(_), true, _) => Transport::MutualTls,
            (ListenAddress::Tcp(_), false, true) => Transport::Mesh,
            (ListenAddress::Tcp(_), false, false) => Transport::Loopback,
        };
        let entries = |setting: &str, values: &[String]| {
            values
                .iter()
                .map(|value| value.trim())
                .filter(|value| !value.is_empty())
                .map(|value| Principal::parse(setting, value))
                .collect::<Result<Vec<_>, Error>>()
        };
        let mut registry = entries("CRYPTO_REGISTRY_CLIENTS", &self.registry_clients)?;
        for name in self.allowed_clients.iter().map(|n| n.trim()) {
            if !name.is_empty() {
                registry.push(Principal::parse(
                    "CRYPTO_ALLOWED_CLIENTS",
                    &format!("dns:{name}"),
                )?);
            }
        }
        let operator = entries("CRYPTO_OPERATOR_CLIENTS", &self.operator_clients)?;
        Callers::new(transport, registry, operator, self.insecure_dev_callers)
    }

    /// The Python platform's Fernet key for `ImportFernet`, when configured:
    /// `LEGACY_FERNET_KEY` (its `ENCRYPTION_KEY`: URL-safe base64 of 32
    /// bytes), or `LEGACY_MASTER_SECRET` with `LEGACY_ENCRYPTION_SALT` (its
    /// `MASTER_SECRET` and `ENCRYPTION_SALT`, through PBKDF2-HMAC-SHA256 with
    /// 100,000 iterations); each also as `*_FILE`. `env` as in
    /// [`Args::keyring`]. The values are used exactly as the platform used
    /// them, so no minimum length applies.
    pub fn legacy_key(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<FernetKey>, Error> {
        const KEY: &str = "LEGACY_FERNET_KEY";
        const MASTER: &str = "LEGACY_MASTER_SECRET";
        const SALT: &str = "LEGACY_ENCRYPTION_SALT";
        let key = secret(&env, KEY)?;
        let master = secret(&env, MASTER)?;
        let salt = secret(&env, SALT)?;
        match (key, master, salt) {
            (None, None, None) => Ok(None),
            (Some(key), None, None) => FernetKey::from_base64(&key)
                .map(Some)
                .map_err(|problem| Error::config(KEY, problem.to_string())),
            (Some(_), Some(_), _) => Err(Error::config(
                MASTER,
                format!(
                    "conflicts with {KEY}: give the Fernet key, or the master secret with its salt"
                ),
            )),
            (Some(_), None, Some(_)) => Err(Error::config(
                SALT,
                format!("conflicts with {KEY}: the salt goes only with {MASTER}"),
            )),
            (None, Some(_), None) => Err(Error::config(SALT, format!("is required with {MASTER}"))),
            (None, None, Some(_)) => Err(Error::config(SALT, format!("is set without {MASTER}"))),
            (None, Some(secret), Some(salt)) => Ok(Some(FernetKey::from_master_secret(
                secret.as_bytes(),
                salt.as_bytes(),
            ))),
        }
    }

    /// The keyring and the legacy key together, refused when a version of
    /// the keyring is the legacy key or follows from it alone (see
    /// [`check_no_legacy_overlap`]). Start-up and every reload go through
    /// here.
    pub fn keys(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(Keyring, Option<FernetKey>), Error> {
        let keyring = self.keyring(&env)?;
        let legacy = self.legacy_key(&env)?;
        check_no_legacy_overlap(&keyring, legacy.as_ref())?;
        Ok((keyring, legacy))
    }

    /// Builds the keyring from the key settings. `env` looks up an
    /// environment variable (the real environment in `main`, a map in tests).
    pub fn keyring(&self, env: impl Fn(&str) -> Option<String>) -> Result<Keyring, Error> {
        match read_key_source(self.keyring_file.as_deref(), &env)? {
            Some(source) => Keyring::new(source.versions, source.setting),
            None if self.dev => {
                let mut key = Zeroizing::new([0u8; KEY_LEN]);
                getrandom::fill(key.as_mut()).map_err(|_| Error::Random)?;
                tracing::warn!(
                    "development mode: using a random key that lives only as long as this process"
                );
                Keyring::new(vec![(1, KeyMaterial::Direct(key))], "--dev")
            }
            None => Err(Error::config(
                "ENCRYPTION_KEY",
                "no key material: set ENCRYPTION_KEY, MASTER_SECRET with ENCRYPTION_SALT, \
                 ENCRYPTION_KEYS or ENCRYPTION_KEYRING_FILE (or their *_FILE forms), or pass --dev",
            )),
        }
    }

    fn tls_settings(&self) -> Result<Option<TlsSettings>, Error> {
        let (cert, key, ca) = match (
            &self.tls_cert_file,
            &self.tls_key_file,
            &self.tls_client_ca_file,
        ) {
            (None, None, None) => return Ok(None),
            (Some(cert), Some(key), Some(ca)) => (cert, key, ca),
            _ => {
                return Err(Error::config(
                    "CRYPTO_TLS_CERT_FILE",
                    "TLS needs CRYPTO_TLS_CERT_FILE, CRYPTO_TLS_KEY_FILE and CRYPTO_TLS_CLIENT_CA_FILE together",
                ));
            }
        };
        Ok(Some(TlsSettings {
            cert_pem: read_file("CRYPTO_TLS_CERT_FILE", cert)?,
            key_pem: Zeroizing::new(read_file("CRYPTO_TLS_KEY_FILE", key)?),
            client_ca_pem: read_file("CRYPTO_TLS_CLIENT_CA_FILE", ca)?,
        }))
    }
}

/// Refuses plaintext on a non-loopback address unless a mesh provides mTLS.
fn check_transport(listen: &ListenAddress, tls: bool, mesh_mtls: bool) -> Result<(), Error> {
    match listen {
        ListenAddress::Unix(_) if tls => Err(Error::config(
            "CRYPTO_LISTEN",
            "TLS is not used on a unix socket; remove the CRYPTO_TLS_* settings",
        )),
        ListenAddress::Tcp(addr) if !tls && !mesh_mtls && !addr.ip().is_loopback() => {
            Err(Error::config(
                "CRYPTO_LISTEN",
                format!(
                    "refusing plaintext on non-loopback address {addr}: configure mutual TLS \
                     (CRYPTO_TLS_*) or pass --mesh-mtls when a service mesh provides it"
                ),
            ))
        }
        _ => Ok(()),
    }
}

/// The key setting that was given, and the versions it holds.
struct KeySource {
    setting: &'static str,
    versions: Vec<(u32, KeyMaterial)>,
}

impl KeySource {
    fn found(setting: &'static str, versions: Vec<(u32, KeyMaterial)>) -> Option<Self> {
        Some(Self { setting, versions })
    }
}

/// Finds the one key source among the settings; `None` when there is none.
fn read_key_source(
    keyring_file: Option<&Path>,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Option<KeySource>, Error> {
    let keyring = keyring_file
        .map(|path| read_file("ENCRYPTION_KEYRING_FILE", path).map(Zeroizing::new))
        .transpose()?;
    let keys = secret(env, "ENCRYPTION_KEYS")?;
    let key = secret(env, "ENCRYPTION_KEY")?;
    let master = secret(env, "MASTER_SECRET")?;
    let salt = secret(env, "ENCRYPTION_SALT")?;

    let given: Vec<&str> = [
        keyring.as_ref().map(|_| "ENCRYPTION_KEYRING_FILE"),
        keys.as_ref().map(|_| "ENCRYPTION_KEYS"),
        key.as_ref().map(|_| "ENCRYPTION_KEY"),
        master.as_ref().map(|_| "MASTER_SECRET"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if given.len() > 1 {
        return Err(Error::config(
            given[1],
            format!("conflicts with {}: give exactly one key source", given[0]),
        ));
    }
    if salt.is_some() && master.is_none() {
        return Err(Error::config(
            "ENCRYPTION_SALT",
            "is set without MASTER_SECRET",
        ));
    }

    if let Some(text) = keyring {
        return parse_keyring_json(&text).map(|v| KeySource::found("ENCRYPTION_KEYRING_FILE", v));
    }
    if let Some(text) = keys {
        return parse_key_list(&text).map(|v| KeySource::found("ENCRYPTION_KEYS", v));
    }
    if let Some(text) = key {
        let material = KeyMaterial::Direct(decode_key("ENCRYPTION_KEY", &text)?);
        return Ok(KeySource::found("ENCRYPTION_KEY", vec![(1, material)]));
    }
    if let Some(secret) = master {
        let salt =
            salt.ok_or_else(|| Error::config("ENCRYPTION_SALT", "is required with MASTER_SECRET"))?;
        let material = pbkdf2_material("MASTER_SECRET", &secret, &salt)?;
        return Ok(KeySource::found("MASTER_SECRET", vec![(1, material)]));
    }
    Ok(None)
}

/// Reads `NAME` or `NAME_FILE` (not both); a file's trailing newline is
/// dropped. Empty values count as missing material and are refused.
fn secret(
    env: &impl Fn(&str) -> Option<String>,
    name: &str,
) -> Result<Option<Zeroizing<String>>, Error> {
    let file_setting = format!("{name}_FILE");
    let value = env(name).map(Zeroizing::new);
    let file = env(&file_setting);
    let text = match (value, file) {
        (Some(_), Some(_)) => {
            return Err(Error::config(
                file_setting,
                format!("conflicts with {name}: set one of them"),
            ));
        }
        (Some(value), None) => value,
        (None, Some(path)) => {
            let bytes = Zeroizing::new(read_file(&file_setting, Path::new(&path))?);
            let text = std::str::from_utf8(&bytes)
                .map_err(|_| Error::config(&file_setting, "file is not UTF-8"))?;
            Zeroizing::new(text.trim_end_matches(['\n', '\r']).to_owned())
        }
        (None, None) => return Ok(None),
    };
    if text.trim().is_empty() {
        return Err(Error::config(name, "is empty"));
    }
    Ok(Some(text))
}

fn read_file(setting: &str, path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|error| {
        Error::config(
            setting,
            format!("cannot read {}: {}", path.display(), error.kind()),
        )
    })
}

/// Decodes a base64 (standard or URL-safe, padded or not) 32-byte key.
fn decode_key(setting: &str, text: &str) -> Result<Zeroizing<[u8; KEY_LEN]>, Error> {
    let text = text.trim();
    let decoded = [STANDARD, URL_SAFE, STANDARD_NO_PAD, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(text).ok())
        .map(Zeroizing::new)
        .ok_or_else(|| Error::config(setting, "is not base64"))?;
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    if decoded.len() != KEY_LEN {
        return Err(Error::config(
            setting,
            format!(
                "must be base64 of exactly {KEY_LEN} bytes, got {} bytes",
                decoded.len()
            ),
        ));
    }
    key.copy_from_slice(&decoded);
    Ok(key)
}

fn pbkdf2_material(setting: &str, secret: &str, salt: &str) -> Result<KeyMaterial, Error> {
    if secret.len() < 16 {
        return Err(Error::config(setting, "must be at least 16 characters"));
    }
    Ok(KeyMaterial::Pbkdf2 {
        secret: Zeroizing::new(secret.as_bytes().to_vec()),
        salt: Zeroizing::new(salt.as_bytes().to_vec()),
    })
}

/// The old derivation keeps the values it was given: no minimum length
/// applies to a version that only decrypts what already exists.
fn legacy_pbkdf2_material(secret: &str, salt: &str) -> KeyMaterial {
    KeyMaterial::LegacyPbkdf2 {
        secret: Zeroizing::new(secret.as_bytes().to_vec()),
        salt: Zeroizing::new(salt.as_bytes().to_vec()),
    }
}

/// Refuses a keyring with a version whose key is the legacy Fernet key
/// (the one `ImportFernet` opens tokens with) or follows from it alone:
/// whoever holds the old platform's `ENCRYPTION_KEY` could open what that
/// version sealed.
pub fn check_no_legacy_overlap(keyring: &Keyring, legacy: Option<&FernetKey>) -> Result<(), Error> {
    let Some(legacy) = legacy else {
        return Ok(());
    };
    let overlapping = keyring.overlapping_legacy(&legacy.to_bytes());
    match overlapping.first() {
        None => Ok(()),
        Some(version) => Err(Error::config(
            "keyring",
            format!(
                "key version {version} is the legacy Fernet key (LEGACY_*) or derived from it \
                 alone, so the old platform's ENCRYPTION_KEY would open its values: rewrap them \
                 to a new version and retire it before configuring the legacy key, or give the \
                 keyring a key that does not come from the legacy key"
            ),
        )),
    }
}

/// `ENCRYPTION_KEYS`: `1=<base64>,2=<base64>`.
fn parse_key_list(text: &str) -> Result<Vec<(u32, KeyMaterial)>, Error> {
    const SETTING: &str = "ENCRYPTION_KEYS";
    text.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            let (version, key) = entry.split_once('=').ok_or_else(|| {
                Error::config(
                    SETTING,
                    "expected comma-separated VERSION=BASE64KEY entries",
                )
            })?;
            let version = parse_version(SETTING, version.trim())?;
            let key = decode_key(&format!("{SETTING} (version {version})"), key)?;
            Ok((version, KeyMaterial::Direct(key)))
        })
        .collect()
}

#[derive(Deserialize, Zeroize, ZeroizeOnDrop)]
#[serde(deny_unknown_fields)]
struct KeyringFile {
    keys: Vec<KeyringEntry>,
}

#[derive(Deserialize, Zeroize, ZeroizeOnDrop)]
#[serde(deny_unknown_fields)]
struct KeyringEntry {
    version: u32,
    key: Option<String>,
    master_secret: Option<String>,
    salt: Option<String>,
    /// `pbkdf2-v2` or `legacy-pbkdf2`, required with `master_secret`;
    /// `direct` (or nothing) with `key`.
    derivation: Option<String>,
}

fn parse_keyring_json(bytes: &[u8]) -> Result<Vec<(u32, KeyMaterial)>, Error> {
    const SETTING: &str = "ENCRYPTION_KEYRING_FILE";
    // serde_json's message can quote input; report only where it failed.
    let file: KeyringFile = serde_json::from_slice(bytes).map_err(|error| {
        Error::config(
            SETTING,
            format!(
                "not a keyring JSON document (line {}, column {})",
                error.line(),
                error.column()
            ),
        )
    })?;
    file.keys
        .iter()
        .map(|entry| {
            let setting = format!("{SETTING} (version {})", entry.version);
            let derivation = entry.derivation.as_deref();
            let material = match (&entry.key, &entry.master_secret, &entry.salt) {
                (Some(key), None, None) => match derivation {
                    None | Some("direct") => KeyMaterial::Direct(decode_key(&setting, key)?),
                    Some(_) => {
                        return Err(Error::config(
                            setting,
                            "a \"key\" entry takes no \"derivation\" other than \"direct\"",
                        ));
                    }
                },
                (None, Some(secret), Some(salt)) => match derivation {
                    Some("pbkdf2-v2") => pbkdf2_material(&setting, secret, salt)?,
                    Some("legacy-pbkdf2") => legacy_pbkdf2_material(secret, salt),
                    _ => {
                        return Err(Error::config(
                            setting,
                            "a \"master_secret\" entry needs \"derivation\": \"pbkdf2-v2\" \
                             for a new version, or \"legacy-pbkdf2\" for one whose values were \
                             sealed before key derivation v2 (decrypt-only; rewrap, then retire it)",
                        ));
                    }
                },
                _ => {
                    return Err(Error::config(
                        setting,
                        "give either \"key\" or both \"master_secret\" and \"salt\"",
                    ));
                }
            };
            Ok((entry.version, material))
        })
        .collect()
}

fn parse_version(setting: &str, text: &str) -> Result<u32, Error> {
    match text.parse::<u32>() {
        Ok(version) if version > 0 => Ok(version),
        _ => Err(Error::config(
            setting,
            "key versions are positive whole numbers",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn args(extra: &[&str]) -> Args {
        let mut argv = vec!["crypto-service"];
        argv.extend_from_slice(extra);
        Args::parse_from(argv)
    }

    fn keyring_error(vars: &[(&str, &str)]) -> String {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        match args(&[]).keyring(|name| vars.get(name).cloned()) {
            Ok(_) => String::from("no error"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        <Args as clap::CommandFactory>::command().debug_assert();
    }

    #[test]
    fn bad_key_material_names_the_setting_and_not_the_value() {
        let short = STANDARD.encode([9u8; 16]);
        let message = keyring_error(&[("ENCRYPTION_KEY", &short)]);
        assert!(message.starts_with("ENCRYPTION_KEY: must be base64 of exactly 32 bytes"));
        assert!(!message.contains(&short));

        let message = keyring_error(&[("ENCRYPTION_KEY", "not base64 at all!")]);
        assert_eq!(message, "ENCRYPTION_KEY: is not base64");

        let message = keyring_error(&[("MASTER_SECRET", "a-long-enough-master-secret")]);
        assert_eq!(message, "ENCRYPTION_SALT: is required with MASTER_SECRET");

        let message = keyring_error(&[]);
        assert!(message.starts_with("ENCRYPTION_KEY: no key material"));

        let key = STANDARD.encode([1u8; 32]);
        let message = keyring_error(&[("ENCRYPTION_KEY", &key), ("MASTER_SECRET", "x")]);
        assert!(message.starts_with("MASTER_SECRET: conflicts with ENCRYPTION_KEY"));

        let message = keyring_error(&[("ENCRYPTION_KEYS", &format!("1={key},1={key}"))]);
        assert_eq!(message, "ENCRYPTION_KEYS: key version 1 is listed twice");
    }

    #[test]
    fn plaintext_on_a_public_address_is_refused_without_mesh_mtls() {
        let error = args(&["--listen", "0.0.0.0:50061", "--insecure-dev-callers"])
            .settings()
            .err();
        assert!(error.is_some_and(|e| {
            e.to_string()
                .starts_with("CRYPTO_LISTEN: refusing plaintext")
        }));
        let mesh = [
            "--mesh-mtls",
            "--registry-clients",
            "uri:spiffe://c/sa/registry",
        ];
        assert!(
            args(&[&["--listen", "0.0.0.0:50061"][..], &mesh].concat())
                .settings()
                .is_ok()
        );
        assert!(
            args(&["--listen", "[::1]:50061", "--insecure-dev-callers"])
                .settings()
                .is_ok()
        );
        assert!(
            args(&[
                "--listen",
                "unix:/tmp/crypto.sock",
                "--registry-clients",
                "uid:0"
            ])
            .settings()
            .is_ok()
        );
    }

    #[test]
    fn plaintext_loopback_without_development_mode_is_refused() {
        let error = args(&["--listen", "127.0.0.1:50061"])
            .settings()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            error.starts_with("CRYPTO_LISTEN: plaintext TCP gives no way to tell callers apart"),
            "{error}"
        );
        let error = args(&[
            "--listen",
            "unix:/tmp/c.sock",
            "--operator-clients",
            "uid:x",
        ])
        .settings()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(
            error.starts_with("CRYPTO_OPERATOR_CLIENTS: \"uid:x\""),
            "{error}"
        );
    }

    fn legacy_error(vars: &[(&str, &str)]) -> String {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        match args(&[]).legacy_key(|name| vars.get(name).cloned()) {
            Ok(Some(key)) => format!("key {key:?}"),
            Ok(None) => String::from("none"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn legacy_key_settings_are_optional_exclusive_and_never_echoed() {
        let fernet = URL_SAFE.encode([7u8; 32]);
        assert_eq!(legacy_error(&[]), "none");
        assert_eq!(
            legacy_error(&[("LEGACY_FERNET_KEY", &fernet)]),
            "key FernetKey(<redacted>)"
        );
        let short = URL_SAFE.encode([7u8; 20]);
        let message = legacy_error(&[("LEGACY_FERNET_KEY", &short)]);
        assert!(message.starts_with("LEGACY_FERNET_KEY: must be base64 of exactly 32 bytes"));
        assert!(!message.contains(&short));
        assert!(
            legacy_error(&[("LEGACY_FERNET_KEY", "%%%")]).starts_with("LEGACY_FERNET_KEY: is not")
        );
        assert!(
            legacy_error(&[
                ("LEGACY_FERNET_KEY", &fernet),
                ("LEGACY_MASTER_SECRET", "s3cret")
            ])
            .starts_with("LEGACY_MASTER_SECRET: conflicts with LEGACY_FERNET_KEY")
        );
        assert!(
            legacy_error(&[
                ("LEGACY_FERNET_KEY", &fernet),
                ("LEGACY_ENCRYPTION_SALT", "salt")
            ])
            .starts_with("LEGACY_ENCRYPTION_SALT: conflicts with LEGACY_FERNET_KEY")
        );
        assert_eq!(
            legacy_error(&[("LEGACY_MASTER_SECRET", "s3cret")]),
            "LEGACY_ENCRYPTION_SALT: is required with LEGACY_MASTER_SECRET"
        );
        assert_eq!(
            legacy_error(&[("LEGACY_ENCRYPTION_SALT", "salt")]),
            "LEGACY_ENCRYPTION_SALT: is set without LEGACY_MASTER_SECRET"
        );
        assert_eq!(
            legacy_error(&[("LEGACY_MASTER_SECRET", " ")]),
            "LEGACY_MASTER_SECRET: is empty"
        );
        let dir = std::env::temp_dir().join(format!("legacy-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("key");
        std::fs::write(&file, format!("{fernet}\n")).expect("write");
        let path = file.display().to_string();
        assert_eq!(
            legacy_error(&[("LEGACY_FERNET_KEY_FILE", &path)]),
            "key FernetKey(<redacted>)"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn key_list_gives_every_version_and_the_newest_encrypts() {
        let one = STANDARD.encode([1u8; 32]);
        let two = URL_SAFE_NO_PAD.encode([2u8; 32]);
        let list = format!("2={two}, 1={one}");
        let ring = args(&[])
            .keyring(|name| (name == "ENCRYPTION_KEYS").then(|| list.clone()))
            .expect("keyring");
        assert_eq!(ring.active_version(), 2);
        assert_eq!(ring.versions().len(), 2);
    }
}
