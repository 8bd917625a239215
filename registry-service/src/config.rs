//! Start-up configuration: flags and environment variables, validated once
//! into typed settings. Nothing else in the registry reads the environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args as ClapArgs, Parser, Subcommand, ValueEnum};
use ops::tls::{ReloadingTls, TlsFile, TlsFiles};
use zeroize::Zeroizing;

use crate::auth::claims::{ClaimMapping, ClaimPath, TenantSource};
use crate::auth::fetch;
use crate::auth::jwks::{Location, Refresh};
use crate::auth::{Expectations, KeySource};
use crate::crypto::ClientTls;
use crate::error::Error;
use crate::store::{self, DatabaseSettings};

/// Flags of the `registry-service` binary. Each flag also reads the
/// environment variable shown in `--help`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "registry-service",
    version,
    about = "agentregistry registry-service: agents, providers and their versions over gRPC."
)]
pub struct Args {
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub common: Common,
    #[command(flatten)]
    pub serve: ServeArgs,
    #[command(flatten)]
    pub jwt: JwtArgs,
}

/// Subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Serve gRPC (the default).
    Serve,
    /// Apply or revert database migrations, or show their status.
    Migrate {
        /// up, down (reverts the newest one) or status.
        #[arg(value_enum, default_value_t = MigrateAction::Up)]
        action: MigrateAction,
    },
    /// Re-encrypt every stored credential (current rows and every version
    /// snapshot) under crypto-service's newest key version, in batches;
    /// resumable and idempotent, safe while the registry serves traffic.
    RewrapCredentials {
        /// Values per Rewrap call.
        #[arg(long, default_value_t = 500)]
        batch_size: u32,
    },
    /// Show how many stored values each key version still protects.
    KeyStatus,
    /// Check the database's invariants: every resource's versions are 1..N
    /// and its current configuration equals its newest snapshot, and every
    /// hash chain (version rows, label moves, the audit trail) is intact.
    /// Exits non-zero and lists each problem when one is broken.
    Verify(VerifyArgs),
    /// Import providers from the Python platform's database, re-encrypting
    /// their Fernet-encrypted API keys inside crypto-service.
    ImportFernet(ImportArgs),
    /// Mint an HS256 token with the configured JWT_HS256_SECRET (and
    /// JWT_ISSUER / JWT_AUDIENCE / JWT_KEY_ID when set), printed to stdout.
    Token(TokenArgs),
    /// Ask the running server's plaintext health port
    /// (REGISTRY_HEALTH_LISTEN; REGISTRY_LISTEN when that is unset and
    /// plaintext) for its status once: exit 0 only on SERVING. Reads the
    /// same settings as `serve`, for compose healthchecks.
    Healthcheck(ops::healthcheck::HealthcheckArgs),
}

/// Settings of `verify`.
#[derive(Debug, Clone, ClapArgs)]
pub struct VerifyArgs {
    /// Also write the chains' current heads as JSON to this file (`-`:
    /// standard output, the report then going to standard error), when
    /// nothing is broken: keep it outside the database, to find later a
    /// chain whose newest rows were deleted and its heads rewritten.
    #[arg(long, value_name = "FILE")]
    pub export_heads: Option<std::path::PathBuf>,
    /// Check the chains against heads written earlier by `--export-heads`:
    /// each exported head must still be in its chain.
    #[arg(long, value_name = "FILE")]
    pub heads: Option<std::path::PathBuf>,
}

/// Settings of `import-fernet`.
#[derive(Debug, Clone, ClapArgs)]
pub struct ImportArgs {
    /// The Python platform's database: `sqlite://path/to/file.db` or
    /// `postgres://…`. Secret when it holds a password.
    #[arg(long, env = "LEGACY_DATABASE_URL")]
    pub legacy_database_url: String,
    /// The tenant to create the providers in.
    #[arg(long)]
    pub tenant: String,
    /// The subject recorded as `created_by` / `changed_by`.
    #[arg(long, default_value = "import-fernet")]
    pub subject: String,
    /// Report what would be imported, and which rows fail, without writing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Settings of `token`.
#[derive(Debug, Clone, ClapArgs)]
pub struct TokenArgs {
    /// The `sub` claim: who is calling (recorded as changed_by).
    #[arg(long)]
    pub subject: String,
    /// The `tenant` claim.
    #[arg(long)]
    pub tenant: String,
    /// Roles, comma-separated: viewer, editor, admin, runtime.
    #[arg(long, value_delimiter = ',', required = true)]
    pub roles: Vec<String>,
    /// Lifetime in seconds (at most JWT_MAX_TOKEN_LIFETIME_SECONDS).
    #[arg(long, default_value_t = 3600)]
    pub ttl_seconds: u64,
}

/// `migrate` actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MigrateAction {
    /// Apply every pending migration.
    Up,
    /// Revert the newest applied migration.
    Down,
    /// List migrations and whether each is applied.
    Status,
}

/// Settings every subcommand uses.
#[derive(Debug, Clone, ClapArgs)]
pub struct Common {
    /// Database URL: `sqlite://path/to/file.db` or `postgres://user@host/db`.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://agentregistry.db",
        global = true
    )]
    pub database_url: String,
    /// Most pooled database connections (default: 1 on SQLite, 10 on
    /// PostgreSQL).
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", global = true)]
    pub database_max_connections: Option<u32>,
    /// Seconds to wait for a database connection (and on SQLite for a lock).
    #[arg(
        long,
        env = "DATABASE_TIMEOUT_SECONDS",
        default_value_t = 5,
        global = true
    )]
    pub database_timeout_seconds: u64,
    /// SQLite only: MiB of page cache per connection (the writer and the
    /// read connection each have one). SQLite's own default, 2 MiB, holds
    /// a few per cent of the agents' indexes at 100,000 agents, and every
    /// page past it is a system call. 1 to 4096.
    #[arg(
        long,
        env = "REGISTRY_SQLITE_CACHE_MIB",
        default_value_t = store::SQLITE_DEFAULT_CACHE_MIB,
        global = true
    )]
    pub sqlite_cache_mib: u32,
    #[command(flatten)]
    pub telemetry: ops::cli::TelemetryArgs,
}

/// Settings of `serve`.
#[derive(Debug, Clone, ClapArgs)]
pub struct ServeArgs {
    /// Where to serve gRPC: TLS with REGISTRY_TLS_CERT_FILE and
    /// REGISTRY_TLS_KEY_FILE; plaintext otherwise, which only a loopback
    /// address allows (or REGISTRY_MESH_MTLS).
    #[arg(long, env = "REGISTRY_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// PEM certificate chain of this server (enables TLS on REGISTRY_LISTEN).
    #[arg(long, env = "REGISTRY_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of that certificate. Secret.
    #[arg(long, env = "REGISTRY_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// PEM CA certificate(s): when set, every client must present a
    /// certificate they signed.
    #[arg(long, env = "REGISTRY_TLS_CLIENT_CA_FILE")]
    pub tls_client_ca_file: Option<PathBuf>,
    /// Seconds between checks of the TLS files; changed files are loaded
    /// for new connections (0: only on SIGHUP, which always reloads).
    #[arg(long, env = "REGISTRY_TLS_RELOAD_SECONDS", default_value_t = 30)]
    pub tls_reload_seconds: u64,
    /// Allow plaintext on a non-loopback address because a service mesh
    /// provides mutual TLS in front of this process.
    #[arg(long, env = "REGISTRY_MESH_MTLS")]
    pub mesh_mtls: bool,
    /// Where to serve grpc.health.v1 alone, in plaintext, with the same
    /// statuses as REGISTRY_LISTEN (for Kubernetes gRPC probes, which cannot
    /// speak TLS); off when unset.
    #[arg(long, env = "REGISTRY_HEALTH_LISTEN")]
    pub health_listen: Option<SocketAddr>,
    /// Development mode: tokens need no audience or issuer. Never in
    /// production; `scripts/dev` turns it on.
    #[arg(long, env = "REGISTRY_DEV")]
    pub dev: bool,
    /// Do not apply pending migrations at start-up.
    #[arg(long, env = "REGISTRY_NO_MIGRATE")]
    pub no_migrate: bool,
    /// crypto-service: `http://HOST:PORT`, `https://HOST:PORT` (mutual TLS,
    /// with the CRYPTO_TLS_* settings) or `unix:/path/to/socket`.
    #[arg(
        long,
        env = "CRYPTO_ENDPOINT",
        default_value = "http://127.0.0.1:50061"
    )]
    pub crypto_endpoint: String,
    /// CA certificate that signed crypto-service's certificate (PEM).
    #[arg(long, env = "CRYPTO_TLS_CA_FILE")]
    pub crypto_tls_ca_file: Option<PathBuf>,
    /// This registry's client certificate for crypto-service (PEM).
    #[arg(long, env = "CRYPTO_TLS_CERT_FILE")]
    pub crypto_tls_cert_file: Option<PathBuf>,
    /// Its private key (PEM). Secret.
    #[arg(long, env = "CRYPTO_TLS_KEY_FILE")]
    pub crypto_tls_key_file: Option<PathBuf>,
    /// The DNS name crypto-service's certificate must be valid for.
    #[arg(long, env = "CRYPTO_TLS_SERVER_NAME")]
    pub crypto_tls_server_name: Option<String>,
    /// Seconds a call to crypto-service may take.
    #[arg(long, env = "CRYPTO_TIMEOUT_SECONDS", default_value_t = 5)]
    pub crypto_timeout_seconds: u64,
    /// Largest gRPC request message, in bytes. The largest valid request
    /// (an agent with every text field and list at its limit, in 4-byte
    /// characters) is about 120 KiB; a message is decoded on a runtime
    /// worker before any check, so a larger limit only lets a caller make
    /// a worker decode more (4 MiB of short strings: ~30 ms).
    #[arg(long, env = "REGISTRY_MAX_MESSAGE_BYTES", default_value_t = 256 * 1024)]
    pub max_message_bytes: usize,
    /// Seconds in-flight calls get to finish after SIGTERM/SIGINT.
    #[arg(long, env = "REGISTRY_DRAIN_SECONDS", default_value_t = 10)]
    pub drain_seconds: u64,
    /// Where to serve Prometheus metrics over HTTP (`/metrics`); off when
    /// unset.
    #[arg(long, env = "REGISTRY_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Seconds between background checks of the database and
    /// crypto-service, which drive readiness.
    #[arg(long, env = "REGISTRY_HEALTH_INTERVAL_SECONDS", default_value_t = 5)]
    pub health_interval_seconds: u64,
    /// Agents kept (each with its configuration) as this process last
    /// wrote them: the first guess of their next update or rollback, which
    /// saves a read while it is current; 0 turns it off.
    #[arg(long, env = "REGISTRY_RECENT_AGENTS", default_value_t = 10_000)]
    pub recent_agents: usize,
    /// The most those kept agents may weigh together, in bytes (an
    /// estimate of what each holds); 0 turns the cache off.
    #[arg(long, env = "REGISTRY_RECENT_AGENTS_BYTES", default_value_t = 32 << 20)]
    pub recent_agents_bytes: usize,
    /// ResolveAgent answers remembered (their etags, no keys) so that a
    /// re-resolution naming one, while nothing in its tenant changed, is
    /// answered `not_modified` without reading the database; 0 turns it
    /// off.
    #[arg(long, env = "REGISTRY_RESOLVE_CACHE", default_value_t = 10_000)]
    pub resolve_cache: usize,
    /// Changes one WatchChanges stream may fall behind by before it is
    /// ended with RESOURCE_EXHAUSTED (the caller resumes from its last
    /// revision). The buffer is shared by a tenant's streams.
    #[arg(long, env = "REGISTRY_WATCH_BUFFER", default_value_t = 1024)]
    pub watch_buffer: usize,
    /// Most WatchChanges streams open at once on this server; more are
    /// refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "REGISTRY_WATCH_MAX_STREAMS", default_value_t = 10_000)]
    pub watch_max_streams: usize,
    /// Most WatchChanges streams one tenant may hold open at once on this
    /// server (at least 1); more are refused with RESOURCE_EXHAUSTED, so
    /// one tenant cannot take every stream.
    #[arg(
        long,
        env = "REGISTRY_WATCH_MAX_STREAMS_PER_TENANT",
        default_value_t = 1_000
    )]
    pub watch_max_streams_per_tenant: usize,
    /// Changes kept per tenant for WatchChanges to replay (its last
    /// revisions); older ones are compacted away, and a watch from before
    /// them answers OUT_OF_RANGE.
    #[arg(long, env = "REGISTRY_WATCH_HISTORY", default_value_t = 100_000)]
    pub watch_history: i64,
    /// Seconds between compactions of the change log.
    #[arg(long, env = "REGISTRY_WATCH_COMPACTION_SECONDS", default_value_t = 60)]
    pub watch_compaction_seconds: u64,
    /// Milliseconds between looks at the change log of every watched
    /// tenant, besides the wake-up of each write through this process and
    /// PostgreSQL's notifications: the bound on a change's delay if a
    /// notification is lost.
    #[arg(long, env = "REGISTRY_WATCH_POLL_MILLISECONDS", default_value_t = 1000)]
    pub watch_poll_milliseconds: u64,
    /// Seconds a deleted agent or provider is kept (restorable with
    /// Undelete, its name reserved) before the retention task purges it
    /// with its history: 1 second to 10 years; default 30 days.
    #[arg(
        long,
        env = "REGISTRY_PURGE_DELETED_AFTER_SECONDS",
        default_value_t = 2_592_000
    )]
    pub purge_deleted_after_seconds: u64,
    /// Seconds between runs of the retention task (each replica runs it;
    /// their purges never collide): 1 second to 1 day; default 1 hour.
    #[arg(long, env = "REGISTRY_PURGE_INTERVAL_SECONDS", default_value_t = 3600)]
    pub purge_interval_seconds: u64,
    /// Days an audit event is kept; older ones are deleted by a periodic
    /// task (at most 36500).
    #[arg(long, env = "REGISTRY_AUDIT_RETENTION_DAYS", default_value_t = 365)]
    pub audit_retention_days: u32,
    /// Milliseconds between rounds of the task that chains new audit events
    /// (tamper evidence). A round asks the database only when a commit
    /// through this process may have recorded an event, and at least once
    /// a minute (events of other replicas); expired events are looked for
    /// every 10 minutes.
    #[arg(long, env = "REGISTRY_AUDIT_SEAL_MILLISECONDS", default_value_t = 1000)]
    pub audit_seal_milliseconds: u64,
    /// Token subjects (`sub`) that may act as platform operators: only a
    /// token of one of them holds the `platform-operator` role it claims.
    /// Key operations (rewrap, retire, every tenant's key status) need it.
    /// Empty (the default): nobody.
    #[arg(long, env = "PLATFORM_OPERATOR_SUBJECTS", value_delimiter = ',')]
    pub platform_operator_subjects: Vec<String>,
    /// Hosts a provider's `base_url` may name, comma-separated: `host` or
    /// `*.domain`. Empty (the default): any host.
    #[arg(long, env = "PROVIDER_ALLOWED_HOSTS", value_delimiter = ',')]
    pub provider_allowed_hosts: Vec<String>,
    /// Origins (`https://ui.example.com`, exact, comma-separated) whose
    /// pages may call the registry from a browser over grpc-web (CORS).
    /// Empty (the default): none; grpc-web from the same origin or from a
    /// non-browser client works without it.
    #[arg(long, env = "REGISTRY_GRPC_WEB_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub grpc_web_allowed_origins: Vec<String>,
    /// Seconds a mutation's request id (AIP-155) is remembered: a retry
    /// with the same id within them is answered with the first call's
    /// answer. Expired ids are deleted by a background task. 1 to 2,592,000
    /// (30 days).
    #[arg(
        long,
        env = "REGISTRY_REQUEST_ID_RETENTION_SECONDS",
        default_value_t = 86_400
    )]
    pub request_id_retention_seconds: u64,
    /// Calls a tenant may make a minute on this server (each replica
    /// counts its own); a call over it answers RESOURCE_EXHAUSTED with the
    /// wait in RetryInfo, before any work. Only authenticated, permitted
    /// calls count. 0 (the default): no limit.
    #[arg(long, env = "REGISTRY_TENANT_CALLS_PER_MINUTE", default_value_t = 0)]
    pub tenant_calls_per_minute: u32,
    /// With a tenant rate: the most calls a tenant may make at once, after
    /// it was idle. 0 (the default): the rate's minute, all at once.
    #[arg(long, env = "REGISTRY_TENANT_CALL_BURST", default_value_t = 0)]
    pub tenant_call_burst: u32,
    /// SQLite only: seconds between checks of the tables' sizes, after
    /// which SQLite's query planner statistics are gathered again for the
    /// tables that grew or shrank a lot (`PRAGMA optimize`; see
    /// ARCHITECTURE.md, "SQLite's planner statistics"). At least 1.
    #[arg(long, env = "REGISTRY_SQLITE_STATISTICS_SECONDS", default_value_t = 60)]
    pub sqlite_statistics_seconds: u64,
    /// SQLite only: virtual machine instructions a filtered page's query
    /// (a List's, and then its count; or ListAuditEvents') may run before
    /// the page is read from a window instead (`REGISTRY_LIST_SCAN_WINDOW`
    /// rows: a page with fewer items than asked, or none, and a next page
    /// token; a List's `total_size` is then the page's own). 50,000 is a
    /// few milliseconds. 0 to 1,000,000,000; 0 reads every filtered page
    /// from a window.
    #[arg(
        long,
        env = "REGISTRY_LIST_SCAN_STEPS",
        default_value_t = store::search::DEFAULT_LIST_SCAN_STEPS
    )]
    pub list_scan_steps: u64,
    /// PostgreSQL only: milliseconds a filtered page's query (a List's,
    /// and then its count; or ListAuditEvents') may run before the page is
    /// read from a window instead, as on SQLite when its instructions run
    /// out. PostgreSQL counts no instructions, so this is time: on a loaded
    /// machine a page may come from a window sooner. 1 to 60,000.
    #[arg(
        long,
        env = "REGISTRY_LIST_SCAN_POSTGRES_MS",
        default_value_t = store::search::DEFAULT_LIST_SCAN_POSTGRES_MS
    )]
    pub list_scan_postgres_ms: u64,
    /// The rows (or audit events), in the listing's order, that a filtered
    /// page read from a window tests against the filter. 1 to 100,000.
    #[arg(
        long,
        env = "REGISTRY_LIST_SCAN_WINDOW",
        default_value_t = store::search::DEFAULT_LIST_SCAN_WINDOW
    )]
    pub list_scan_window: u64,
    /// Tests only, refused outside development mode (REGISTRY_DEV): the
    /// process aborts right after the write of a call with this request id
    /// committed, before it answers (a crash between commit and response,
    /// on cue).
    #[arg(long, env = "REGISTRY_TEST_ABORT_AFTER_COMMIT", hide = true)]
    pub test_abort_after_commit: Option<String>,
    #[command(flatten)]
    pub grpc: ops::cli::GrpcArgs,
}

/// Token verification settings. The HS256 secret itself is read only from
/// the environment (`JWT_HS256_SECRET`) or a file (`JWT_HS256_SECRET_FILE`).
#[derive(Debug, Clone, ClapArgs)]
pub struct JwtArgs {
    /// File holding the HS256 shared secret (at least 32 bytes). Secret.
    #[arg(long, env = "JWT_HS256_SECRET_FILE", global = true)]
    pub jwt_hs256_secret_file: Option<PathBuf>,
    /// PEM public key (RS256 or ES256) that signs tokens.
    #[arg(long, env = "JWT_PUBLIC_KEY_FILE", global = true)]
    pub jwt_public_key_file: Option<PathBuf>,
    /// JWKS file: several RS256/ES256 public keys, chosen by `kid`.
    #[arg(long, env = "JWT_JWKS_FILE", global = true)]
    pub jwt_jwks_file: Option<PathBuf>,
    /// Required `iss` claim.
    #[arg(long, env = "JWT_ISSUER", global = true)]
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim.
    #[arg(long, env = "JWT_AUDIENCE", global = true)]
    pub jwt_audience: Option<String>,
    /// Clock skew allowed on exp, nbf and iat, in seconds.
    #[arg(long, env = "JWT_LEEWAY_SECONDS", default_value_t = 30, global = true)]
    pub jwt_leeway_seconds: u64,
    /// Longest token lifetime accepted, exp - iat in seconds; tokens must
    /// carry iat.
    #[arg(
        long,
        env = "JWT_MAX_TOKEN_LIFETIME_SECONDS",
        default_value_t = crate::auth::DEFAULT_MAX_LIFETIME_SECONDS,
        global = true
    )]
    pub jwt_max_token_lifetime_seconds: u64,
    /// The `kid` of the one HS256 secret or PEM public key (a JWKS names
    /// its own): tokens that name a kid must name this one. Without it, a
    /// token that names any kid is refused.
    #[arg(long, env = "JWT_KEY_ID", global = true)]
    pub jwt_key_id: Option<String>,
    /// An OpenID provider's issuer URL (https): at start-up its discovery
    /// document names the JWKS, which is fetched, cached and refreshed.
    /// Tokens must carry exactly this `iss` (JWT_ISSUER, when set, must
    /// equal it).
    #[arg(long, env = "REGISTRY_OIDC_ISSUER", global = true)]
    pub oidc_issuer: Option<String>,
    /// A JWKS URL (https) to fetch, cache and refresh, without discovery.
    #[arg(long, env = "REGISTRY_JWKS_URL", global = true)]
    pub jwks_url: Option<String>,
    /// PEM CA certificate(s) trusted for the identity provider's HTTPS,
    /// besides the bundled public roots (webpki-roots).
    #[arg(long, env = "REGISTRY_OIDC_CA_FILE", global = true)]
    pub oidc_ca_file: Option<PathBuf>,
    /// The longest the provider's keys are kept without fetching them
    /// again, in seconds: its `Cache-Control: max-age` is honoured up to
    /// this, and this applies when it sends none.
    #[arg(
        long,
        env = "REGISTRY_JWKS_REFRESH_SECONDS",
        default_value_t = 300,
        global = true
    )]
    pub jwks_refresh_seconds: u64,
    /// The shortest time between two fetches of the provider's keys, in
    /// seconds: a token naming an unknown kid triggers a fetch at most this
    /// often, however many arrive.
    #[arg(
        long,
        env = "REGISTRY_JWKS_MIN_REFRESH_SECONDS",
        default_value_t = 30,
        global = true
    )]
    pub jwks_min_refresh_seconds: u64,
    /// Seconds one fetch from the provider (discovery or JWKS) may take.
    #[arg(
        long,
        env = "REGISTRY_JWKS_TIMEOUT_SECONDS",
        default_value_t = 5,
        global = true
    )]
    pub jwks_timeout_seconds: u64,
    /// Where the tenant is in the claims: a claim name, a dotted path
    /// (`org.tenant`) or a JSON pointer (`/https:~1~1example.com~1tenant`).
    #[arg(long, env = "REGISTRY_TENANT_CLAIM", global = true)]
    pub tenant_claim: Option<String>,
    /// The one tenant of every caller, for a provider whose tokens carry
    /// none (instead of REGISTRY_TENANT_CLAIM).
    #[arg(long, env = "REGISTRY_FIXED_TENANT", global = true)]
    pub fixed_tenant: Option<String>,
    /// Where roles are in the claims, comma-separated paths (as for
    /// REGISTRY_TENANT_CLAIM), e.g. `realm_access.roles,scope`; each holds a
    /// list of names or one space-separated string. Default: `roles`.
    #[arg(
        long,
        env = "REGISTRY_ROLES_CLAIMS",
        value_delimiter = ',',
        global = true
    )]
    pub roles_claims: Vec<String>,
    /// The provider's role names mapped onto the registry's,
    /// comma-separated `idp-role=registry-role` (viewer, editor, admin,
    /// runtime, platform-operator); with it only mapped names grant roles.
    #[arg(long, env = "REGISTRY_ROLE_MAP", value_delimiter = ',', global = true)]
    pub role_map: Vec<String>,
}

/// Where `serve` gets the identity provider's keys (see [`JwtArgs::remote_keys`]).
#[derive(Debug, Clone)]
pub struct RemoteKeySettings {
    /// Discovery from an issuer, or a JWKS URL.
    pub location: Location,
    /// The setting that named it, for start-up errors.
    pub setting: &'static str,
    /// The extra CA file, when set.
    pub ca_file: Option<PathBuf>,
    /// How often the keys are fetched.
    pub refresh: Refresh,
    /// How long one fetch may take.
    pub timeout: Duration,
    /// Plain http:// to loopback (development mode).
    pub allow_loopback_http: bool,
}

impl JwtArgs {
    /// The one configured key source, and the setting that named it.
    /// `env` looks up an environment variable (only `JWT_HS256_SECRET`).
    pub fn key_source(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(KeySource, &'static str), Error> {
        let read = |setting: &'static str, path: &PathBuf| {
            std::fs::read(path).map_err(|e| {
                Error::config(
                    setting,
                    format!("cannot read {}: {}", path.display(), e.kind()),
                )
            })
        };
        let mut sources = Vec::new();
        if let Some(remote) = self.remote_setting() {
            sources.push((KeySource::Remote, remote));
        }
        if let Some(secret) = env("JWT_HS256_SECRET").filter(|s| !s.is_empty()) {
            sources.push((
                KeySource::Hs256(Zeroizing::new(secret.into_bytes())),
                "JWT_HS256_SECRET",
            ));
        }
        if let Some(path) = &self.jwt_hs256_secret_file {
            let mut bytes = read("JWT_HS256_SECRET_FILE", path)?;
            while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                bytes.pop();
            }
            sources.push((
                KeySource::Hs256(Zeroizing::new(bytes)),
                "JWT_HS256_SECRET_FILE",
            ));
        }
        if let Some(path) = &self.jwt_public_key_file {
            sources.push((
                KeySource::PublicKeyPem(read("JWT_PUBLIC_KEY_FILE", path)?),
                "JWT_PUBLIC_KEY_FILE",
            ));
        }
        if let Some(path) = &self.jwt_jwks_file {
            sources.push((
                KeySource::Jwks(read("JWT_JWKS_FILE", path)?),
                "JWT_JWKS_FILE",
            ));
        }
        match sources.len() {
            0 => Err(Error::config(
                "JWT_HS256_SECRET",
                "no token verification key: set REGISTRY_OIDC_ISSUER, REGISTRY_JWKS_URL, JWT_HS256_SECRET (or JWT_HS256_SECRET_FILE), JWT_PUBLIC_KEY_FILE or JWT_JWKS_FILE",
            )),
            1 => Ok(sources.remove(0)),
            _ => Err(Error::config(
                sources[1].1,
                format!(
                    "conflicts with {}: give exactly one token key source",
                    sources[0].1
                ),
            )),
        }
    }

    /// The identity provider `serve` fetches keys from, when one is
    /// configured (REGISTRY_OIDC_ISSUER or REGISTRY_JWKS_URL, exclusive of
    /// each other and of the key files). `dev` allows plain http:// to a
    /// loopback address.
    pub fn remote_keys(&self, dev: bool) -> Result<Option<RemoteKeySettings>, Error> {
        let Some(setting) = self.remote_setting() else {
            if self.oidc_ca_file.is_some() {
                return Err(Error::config(
                    "REGISTRY_OIDC_CA_FILE",
                    "is for REGISTRY_OIDC_ISSUER or REGISTRY_JWKS_URL, neither of which is set",
                ));
            }
            return Ok(None);
        };
        let location = match (non_empty(&self.oidc_issuer), non_empty(&self.jwks_url)) {
            (Some(issuer), None) => {
                fetch::Url::parse(issuer, dev)
                    .map_err(|problem| Error::config("REGISTRY_OIDC_ISSUER", problem))?;
                if let Some(other) = non_empty(&self.jwt_issuer).filter(|jwt| *jwt != issuer) {
                    return Err(Error::config(
                        "JWT_ISSUER",
                        format!(
                            "{other:?} differs from REGISTRY_OIDC_ISSUER {issuer:?}: tokens carry the provider's issuer; leave JWT_ISSUER unset"
                        ),
                    ));
                }
                Location::Issuer(issuer.to_owned())
            }
            (None, Some(url)) => Location::JwksUrl(
                fetch::Url::parse(url, dev)
                    .map_err(|problem| Error::config("REGISTRY_JWKS_URL", problem))?,
            ),
            _ => {
                return Err(Error::config(
                    "REGISTRY_JWKS_URL",
                    "conflicts with REGISTRY_OIDC_ISSUER: discovery finds the JWKS; give one",
                ));
            }
        };
        let min_interval = Duration::from_secs(at_least(
            "REGISTRY_JWKS_MIN_REFRESH_SECONDS",
            self.jwks_min_refresh_seconds,
            1,
        )?);
        let max_interval = Duration::from_secs(at_least(
            "REGISTRY_JWKS_REFRESH_SECONDS",
            self.jwks_refresh_seconds,
            self.jwks_min_refresh_seconds,
        )?);
        Ok(Some(RemoteKeySettings {
            location,
            setting,
            ca_file: self.oidc_ca_file.clone(),
            refresh: Refresh {
                min_interval,
                max_interval,
            },
            timeout: Duration::from_secs(at_least(
                "REGISTRY_JWKS_TIMEOUT_SECONDS",
                self.jwks_timeout_seconds,
                1,
            )?),
            allow_loopback_http: dev,
        }))
    }

    /// The setting naming an identity provider, when one does.
    fn remote_setting(&self) -> Option<&'static str> {
        if non_empty(&self.oidc_issuer).is_some() {
            Some("REGISTRY_OIDC_ISSUER")
        } else if non_empty(&self.jwks_url).is_some() {
            Some("REGISTRY_JWKS_URL")
        } else {
            None
        }
    }

    /// Where the tenant and roles are read from the claims.
    pub fn claim_mapping(&self) -> Result<ClaimMapping, Error> {
        let mut mapping = ClaimMapping::default();
        match (non_empty(&self.tenant_claim), non_empty(&self.fixed_tenant)) {
            (Some(_), Some(_)) => {
                return Err(Error::config(
                    "REGISTRY_FIXED_TENANT",
                    "conflicts with REGISTRY_TENANT_CLAIM: the tenant is either fixed or read from the token",
                ));
            }
            (Some(path), None) => {
                mapping.tenant = TenantSource::Claim(
                    ClaimPath::parse(path)
                        .map_err(|problem| Error::config("REGISTRY_TENANT_CLAIM", problem))?,
                );
            }
            (None, Some(tenant)) => {
                crate::auth::check_identity_name(tenant)
                    .map_err(|problem| Error::config("REGISTRY_FIXED_TENANT", problem))?;
                mapping.tenant = TenantSource::Fixed(tenant.to_owned());
            }
            (None, None) => {}
        }
        let paths: Vec<&str> = self
            .roles_claims
            .iter()
            .map(|path| path.trim())
            .filter(|path| !path.is_empty())
            .collect();
        if !paths.is_empty() {
            mapping.roles = paths
                .into_iter()
                .map(ClaimPath::parse)
                .collect::<Result<_, _>>()
                .map_err(|problem| Error::config("REGISTRY_ROLES_CLAIMS", problem))?;
        }
        if !self.role_map.is_empty() {
            mapping.role_map = Some(
                ClaimMapping::parse_role_map(&self.role_map)
                    .map_err(|problem| Error::config("REGISTRY_ROLE_MAP", problem))?,
            );
        }
        Ok(mapping)
    }

    /// What tokens must carry besides a valid signature, as configured
    /// (the `token` subcommand mints to these). With REGISTRY_OIDC_ISSUER,
    /// the issuer is the provider's.
    pub fn expectations(&self) -> Expectations {
        Expectations {
            issuer: non_empty(&self.jwt_issuer)
                .or(non_empty(&self.oidc_issuer))
                .map(str::to_owned),
            audience: self.jwt_audience.clone().filter(|s| !s.is_empty()),
            leeway_seconds: self.jwt_leeway_seconds,
            max_lifetime_seconds: self.jwt_max_token_lifetime_seconds,
            key_id: self.jwt_key_id.clone().filter(|s| !s.is_empty()),
        }
    }

    /// The expectations `serve` verifies with. Outside development mode
    /// (`dev`) an audience and an issuer are required: without them any
    /// token the key signed, for any service, would pass.
    pub fn serving_expectations(&self, dev: bool) -> Result<Expectations, Error> {
        let expectations = self.expectations();
        if expectations.max_lifetime_seconds == 0 {
            return Err(Error::config(
                "JWT_MAX_TOKEN_LIFETIME_SECONDS",
                "must be at least 1",
            ));
        }
        if !dev {
            for (setting, value) in [
                ("JWT_AUDIENCE", &expectations.audience),
                ("JWT_ISSUER", &expectations.issuer),
            ] {
                if value.is_none() {
                    return Err(Error::config(
                        setting,
                        "is required: tokens are checked for the audience and issuer this \
                         registry trusts (set JWT_AUDIENCE and JWT_ISSUER; only development \
                         mode, REGISTRY_DEV=true, runs without them)",
                    ));
                }
            }
        }
        Ok(expectations)
    }
}

/// The audit trail's upkeep (`store::audit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditSettings {
    /// How long an event is kept.
    pub retention: Duration,
    /// How often new events are chained and expired ones deleted.
    pub seal_interval: Duration,
}

/// The longest audit retention, in days (a hundred years).
pub const MAX_AUDIT_RETENTION_DAYS: u32 = 36_500;

/// Validated settings of `serve`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub dev: bool,
    pub database: DatabaseSettings,
    pub migrate: bool,
    pub crypto_endpoint: String,
    pub crypto_tls: Option<ClientTls>,
    pub crypto_timeout: Duration,
    pub max_message_bytes: usize,
    pub drain: Duration,
    pub metrics_listen: Option<SocketAddr>,
    pub health_interval: Duration,
    pub recent_agents: usize,
    pub recent_agents_bytes: usize,
    pub watch: crate::watch::WatchSettings,
    pub retention: crate::retention::RetentionSettings,
    pub audit: AuditSettings,
    pub resolve_cache: usize,
    pub platform_operator_subjects: Vec<String>,
    pub destinations: crate::destinations::Destinations,
    pub grpc_web_allowed_origins: crate::cors::AllowedOrigins,
    /// How long request ids are remembered.
    pub request_id_retention: Duration,
    /// How often SQLite's planner statistics are checked.
    pub sqlite_statistics_interval: Duration,
    /// How far a filtered listing searches before it answers.
    pub list_scan: store::search::ListScan,
    /// The test hook's request id (development mode only).
    pub abort_after_commit: Option<String>,
    /// Each tenant's call rate; `None`: no limit.
    pub tenant_rate: Option<crate::tenant_limits::TenantRate>,
    pub grpc: ops::cli::GrpcArgs,
}

/// How `serve` listens (see [`ServeArgs::transport`]).
#[derive(Debug, Clone)]
pub struct Transport {
    /// TLS on the gRPC listener; `None`: plaintext.
    pub tls: Option<Arc<ReloadingTls>>,
    /// How often the TLS files are checked for changes (`None`: only on
    /// SIGHUP).
    pub tls_reload: Option<Duration>,
    /// The plaintext health-only listener, when configured.
    pub health_listen: Option<SocketAddr>,
}

/// The longest `REGISTRY_REQUEST_ID_RETENTION_SECONDS`: 30 days.
const MAX_REQUEST_ID_RETENTION_SECONDS: u64 = 30 * 24 * 60 * 60;

/// Pool size on SQLite unless `DATABASE_MAX_CONNECTIONS` says otherwise.
const SQLITE_DEFAULT_CONNECTIONS: u32 = 1;
/// Pool size on PostgreSQL unless `DATABASE_MAX_CONNECTIONS` says otherwise.
const POSTGRES_DEFAULT_CONNECTIONS: u32 = 10;

impl Common {
    /// The database settings.
    pub fn database(&self) -> Result<DatabaseSettings, Error> {
        let url = self.database_url.trim();
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return Err(Error::config(
                "DATABASE_URL",
                "must start with sqlite: or postgres://",
            ));
        }
        // SQLite runs one writer at a time whatever the pool size; with more
        // connections, writers that queue do so in SQLite's busy handler
        // (sleep and poll, unfair, SQLITE_BUSY after the timeout) and each
        // connection has its own worker thread to hand statements to. One
        // connection queues callers in the pool instead, in order, and
        // measured the least CPU per call (BENCHMARKS.md, issue 3). Reads
        // outside a transaction have a read-only connection of their own
        // (`store::Store`).
        let max_connections =
            self.database_max_connections
                .unwrap_or(if url.starts_with("sqlite:") {
                    SQLITE_DEFAULT_CONNECTIONS
                } else {
                    POSTGRES_DEFAULT_CONNECTIONS
                });
        if max_connections == 0 {
            return Err(Error::config(
                "DATABASE_MAX_CONNECTIONS",
                "must be at least 1",
            ));
        }
        Ok(DatabaseSettings {
            url: url.to_owned(),
            max_connections,
            sqlite_cache_mib: within("REGISTRY_SQLITE_CACHE_MIB", self.sqlite_cache_mib, 1, 4096)?,
            acquire_timeout: Duration::from_secs(at_least(
                "DATABASE_TIMEOUT_SECONDS",
                self.database_timeout_seconds,
                1,
            )?),
        })
    }
}

/// `PLATFORM_OPERATOR_SUBJECTS`, trimmed, empty entries dropped. An entry
/// no token could carry (`auth::check_identity_name`) is refused, so that
/// a listed operator who could never be admitted does not pass unnoticed.
fn operator_subjects(listed: &[String]) -> Result<Vec<String>, Error> {
    listed
        .iter()
        .map(|subject| subject.trim())
        .filter(|subject| !subject.is_empty())
        .map(|subject| {
            crate::auth::check_identity_name(subject)
                .map(|()| subject.to_owned())
                .map_err(|problem| {
                    Error::config("PLATFORM_OPERATOR_SUBJECTS", format!("an entry {problem}"))
                })
        })
        .collect()
}

impl ServeArgs {
    /// Validates into [`Settings`].
    pub fn settings(&self, common: &Common) -> Result<Settings, Error> {
        let crypto_endpoint = self.crypto_endpoint.trim().to_owned();
        Ok(Settings {
            listen: self.listen,
            dev: self.dev,
            database: common.database()?,
            migrate: !self.no_migrate,
            crypto_tls: self.crypto_tls(&crypto_endpoint)?,
            crypto_endpoint,
            crypto_timeout: Duration::from_secs(at_least(
                "CRYPTO_TIMEOUT_SECONDS",
                self.crypto_timeout_seconds,
                1,
            )?),
            max_message_bytes: at_least(
                "REGISTRY_MAX_MESSAGE_BYTES",
                self.max_message_bytes,
                1024,
            )?,
            drain: Duration::from_secs(self.drain_seconds),
            metrics_listen: self.metrics_listen,
            health_interval: Duration::from_secs(at_least(
                "REGISTRY_HEALTH_INTERVAL_SECONDS",
                self.health_interval_seconds,
                1,
            )?),
            recent_agents: self.recent_agents,
            recent_agents_bytes: self.recent_agents_bytes,
            watch: crate::watch::WatchSettings {
                buffer: within(
                    "REGISTRY_WATCH_BUFFER",
                    self.watch_buffer,
                    1,
                    crate::watch::MAX_BUFFER,
                )?,
                max_streams: self.watch_max_streams,
                max_streams_per_tenant: at_least(
                    "REGISTRY_WATCH_MAX_STREAMS_PER_TENANT",
                    self.watch_max_streams_per_tenant,
                    1,
                )?,
                history: at_least("REGISTRY_WATCH_HISTORY", self.watch_history, 1)?,
                compaction_interval: Duration::from_secs(at_least(
                    "REGISTRY_WATCH_COMPACTION_SECONDS",
                    self.watch_compaction_seconds,
                    1,
                )?),
                poll_interval: Duration::from_millis(at_least(
                    "REGISTRY_WATCH_POLL_MILLISECONDS",
                    self.watch_poll_milliseconds,
                    10,
                )?),
            },
            retention: crate::retention::RetentionSettings {
                purge_after: Duration::from_secs(within(
                    "REGISTRY_PURGE_DELETED_AFTER_SECONDS",
                    self.purge_deleted_after_seconds,
                    1,
                    crate::retention::MAX_PURGE_AFTER_SECONDS,
                )?),
                interval: Duration::from_secs(within(
                    "REGISTRY_PURGE_INTERVAL_SECONDS",
                    self.purge_interval_seconds,
                    1,
                    86_400,
                )?),
            },
            audit: AuditSettings {
                retention: Duration::from_secs(
                    u64::from(within(
                        "REGISTRY_AUDIT_RETENTION_DAYS",
                        self.audit_retention_days,
                        1,
                        MAX_AUDIT_RETENTION_DAYS,
                    )?) * 86_400,
                ),
                seal_interval: Duration::from_millis(at_least(
                    "REGISTRY_AUDIT_SEAL_MILLISECONDS",
                    self.audit_seal_milliseconds,
                    10,
                )?),
            },
            resolve_cache: self.resolve_cache,
            platform_operator_subjects: operator_subjects(&self.platform_operator_subjects)?,
            destinations: crate::destinations::Destinations::parse(
                &self.provider_allowed_hosts,
                "PROVIDER_ALLOWED_HOSTS",
            )?,
            grpc_web_allowed_origins: crate::cors::AllowedOrigins::parse(
                &self.grpc_web_allowed_origins,
                "REGISTRY_GRPC_WEB_ALLOWED_ORIGINS",
            )?,
            request_id_retention: Duration::from_secs(within(
                "REGISTRY_REQUEST_ID_RETENTION_SECONDS",
                self.request_id_retention_seconds,
                1,
                MAX_REQUEST_ID_RETENTION_SECONDS,
            )?),
            sqlite_statistics_interval: Duration::from_secs(at_least(
                "REGISTRY_SQLITE_STATISTICS_SECONDS",
                self.sqlite_statistics_seconds,
                1,
            )?),
            list_scan: store::search::ListScan {
                steps: within(
                    "REGISTRY_LIST_SCAN_STEPS",
                    self.list_scan_steps,
                    0,
                    MAX_LIST_SCAN_STEPS,
                )?,
                postgres_time: Duration::from_millis(within(
                    "REGISTRY_LIST_SCAN_POSTGRES_MS",
                    self.list_scan_postgres_ms,
                    1,
                    MAX_LIST_SCAN_POSTGRES_MS,
                )?),
                window: within(
                    "REGISTRY_LIST_SCAN_WINDOW",
                    self.list_scan_window,
                    1,
                    MAX_LIST_SCAN_WINDOW,
                )?,
            },
            abort_after_commit: self.abort_after_commit()?,
            tenant_rate: self.tenant_rate()?,
            grpc: self.grpc.clone(),
        })
    }

    /// Each tenant's call rate: none without a rate; a burst needs one.
    fn tenant_rate(&self) -> Result<Option<crate::tenant_limits::TenantRate>, Error> {
        use crate::tenant_limits::{MAX_CALLS_PER_MINUTE, TenantRate};
        const RATE: &str = "REGISTRY_TENANT_CALLS_PER_MINUTE";
        const BURST: &str = "REGISTRY_TENANT_CALL_BURST";
        let per_minute = within(RATE, self.tenant_calls_per_minute, 0, MAX_CALLS_PER_MINUTE)?;
        let burst = within(BURST, self.tenant_call_burst, 0, MAX_CALLS_PER_MINUTE)?;
        match (per_minute, burst) {
            (0, 0) => Ok(None),
            (0, _) => Err(Error::config(
                BURST,
                "limits a tenant's call rate: set REGISTRY_TENANT_CALLS_PER_MINUTE too",
            )),
            (per_minute, 0) => Ok(Some(TenantRate {
                per_minute,
                burst: per_minute,
            })),
            (per_minute, burst) => Ok(Some(TenantRate { per_minute, burst })),
        }
    }

    /// The test hook, refused outside development mode and unless it names
    /// a request id (a UUID, as requests must).
    fn abort_after_commit(&self) -> Result<Option<String>, Error> {
        const SETTING: &str = "REGISTRY_TEST_ABORT_AFTER_COMMIT";
        let Some(request_id) = &self.test_abort_after_commit else {
            return Ok(None);
        };
        if !self.dev {
            return Err(Error::config(
                SETTING,
                "is a test hook that kills the process: refused outside development mode \
                 (REGISTRY_DEV)",
            ));
        }
        let request_id = uuid::Uuid::try_parse(request_id.trim())
            .map_err(|_| Error::config(SETTING, "must be a request id (a UUID)"))?;
        Ok(Some(request_id.hyphenated().to_string()))
    }

    /// How `serve` listens: TLS loaded from its files (or plaintext where
    /// that is allowed), and the plaintext health port. Only `serve` asks,
    /// so the other subcommands never need the TLS files.
    pub fn transport(&self) -> Result<Transport, Error> {
        let tls = match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.tls_client_ca_file.clone(),
            }),
            (None, None) if self.tls_client_ca_file.is_some() => {
                return Err(Error::config(
                    "REGISTRY_TLS_CLIENT_CA_FILE",
                    "client certificates need TLS: set REGISTRY_TLS_CERT_FILE and REGISTRY_TLS_KEY_FILE too",
                ));
            }
            (None, None) => None,
            (Some(_), None) => {
                return Err(Error::config(
                    "REGISTRY_TLS_KEY_FILE",
                    "is required with REGISTRY_TLS_CERT_FILE",
                ));
            }
            (None, Some(_)) => {
                return Err(Error::config(
                    "REGISTRY_TLS_CERT_FILE",
                    "is required with REGISTRY_TLS_KEY_FILE",
                ));
            }
        };
        if tls.is_none() && !self.mesh_mtls && !self.listen.ip().is_loopback() {
            return Err(Error::config(
                "REGISTRY_LISTEN",
                format!(
                    "refusing plaintext on non-loopback address {}: calls carry bearer tokens \
                     and ResolveAgent returns API keys; set REGISTRY_TLS_CERT_FILE and \
                     REGISTRY_TLS_KEY_FILE, or REGISTRY_MESH_MTLS=true when a service mesh \
                     provides mutual TLS",
                    self.listen
                ),
            ));
        }
        let tls = tls
            .map(|files| {
                ReloadingTls::load(files).map_err(|error| {
                    let setting = match error.file {
                        TlsFile::Cert => "REGISTRY_TLS_CERT_FILE",
                        TlsFile::Key => "REGISTRY_TLS_KEY_FILE",
                        TlsFile::ClientCa => "REGISTRY_TLS_CLIENT_CA_FILE",
                    };
                    Error::config(setting, error.problem)
                })
            })
            .transpose()?
            .map(Arc::new);
        Ok(Transport {
            tls,
            tls_reload: (self.tls_reload_seconds > 0)
                .then(|| Duration::from_secs(self.tls_reload_seconds)),
            health_listen: self.health_listen,
        })
    }

    fn crypto_tls(&self, endpoint: &str) -> Result<Option<ClientTls>, Error> {
        let files = (
            &self.crypto_tls_ca_file,
            &self.crypto_tls_cert_file,
            &self.crypto_tls_key_file,
        );
        let (ca, cert, key) = match files {
            (None, None, None) if endpoint.starts_with("https://") => {
                return Err(Error::config(
                    "CRYPTO_ENDPOINT",
                    "https:// needs CRYPTO_TLS_CA_FILE, CRYPTO_TLS_CERT_FILE and CRYPTO_TLS_KEY_FILE",
                ));
            }
            (None, None, None) => return Ok(None),
            (Some(ca), Some(cert), Some(key)) => (ca, cert, key),
            _ => {
                return Err(Error::config(
                    "CRYPTO_TLS_CA_FILE",
                    "mutual TLS to crypto-service needs CRYPTO_TLS_CA_FILE, CRYPTO_TLS_CERT_FILE and CRYPTO_TLS_KEY_FILE together",
                ));
            }
        };
        if !endpoint.starts_with("https://") {
            return Err(Error::config(
                "CRYPTO_ENDPOINT",
                "must be https:// when CRYPTO_TLS_* is set",
            ));
        }
        let read = |setting: &str, path: &PathBuf| {
            std::fs::read(path).map_err(|e| {
                Error::config(
                    setting,
                    format!("cannot read {}: {}", path.display(), e.kind()),
                )
            })
        };
        let server_name = self.crypto_tls_server_name.clone().unwrap_or_else(|| {
            endpoint
                .trim_start_matches("https://")
                .split(':')
                .next()
                .unwrap_or_default()
                .to_owned()
        });
        Ok(Some(ClientTls {
            ca_pem: read("CRYPTO_TLS_CA_FILE", ca)?,
            cert_pem: read("CRYPTO_TLS_CERT_FILE", cert)?,
            key_pem: Zeroizing::new(read("CRYPTO_TLS_KEY_FILE", key)?),
            server_name,
        }))
    }
}

/// The setting's value unless it is unset or empty.
fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// The most a filtered page may search: a minute or more of SQLite's
/// work, past which a caller has long given up.
const MAX_LIST_SCAN_STEPS: u64 = 1_000_000_000;
/// The largest window a filtered page may read (SQLite reads and tests
/// 600–1,500 rows a millisecond).
const MAX_LIST_SCAN_WINDOW: u64 = 100_000;
/// The longest `REGISTRY_LIST_SCAN_POSTGRES_MS`: a minute.
const MAX_LIST_SCAN_POSTGRES_MS: u64 = 60_000;

/// `value` when it is at least `min`; a smaller one is refused, not
/// raised: a setting the operator wrote is never silently changed.
fn at_least<T: PartialOrd + std::fmt::Display>(
    setting: &str,
    value: T,
    min: T,
) -> Result<T, Error> {
    if value < min {
        return Err(Error::config(setting, format!("must be at least {min}")));
    }
    Ok(value)
}

/// `value` when it is within `min..=max`; otherwise refused (never
/// clamped).
fn within<T: PartialOrd + std::fmt::Display>(
    setting: &str,
    value: T,
    min: T,
    max: T,
) -> Result<T, Error> {
    if value > max {
        return Err(Error::config(setting, format!("must be at most {max}")));
    }
    at_least(setting, value, min)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser;

    use super::Args;
    use crate::error::Error;

    fn sqlite_cache(flag: &[&str]) -> Result<u32, Error> {
        let args =
            Args::try_parse_from([&["registry-service"], flag].concat()).expect("the flags parse");
        args.common.database().map(|d| d.sqlite_cache_mib)
    }

    /// The page cache's size is taken within 1 to 4096 MiB and refused
    /// outside them, never clamped.
    #[test]
    fn the_sqlite_cache_size_is_refused_outside_its_range() {
        assert_eq!(sqlite_cache(&[]).ok(), Some(32), "the default");
        assert_eq!(
            sqlite_cache(&["--sqlite-cache-mib", "4096"]).ok(),
            Some(4096)
        );
        for (value, problem) in [
            ("0", "must be at least 1"),
            ("4097", "must be at most 4096"),
        ] {
            match sqlite_cache(&["--sqlite-cache-mib", value]) {
                Err(Error::Config {
                    setting,
                    problem: said,
                }) => {
                    assert_eq!(
                        (setting.as_str(), said.as_str()),
                        ("REGISTRY_SQLITE_CACHE_MIB", problem)
                    );
                }
                other => panic!("{value}: {other:?}"),
            }
        }
    }

    fn list_scan(flags: &[&str]) -> Result<crate::store::search::ListScan, Error> {
        let args =
            Args::try_parse_from([&["registry-service"], flags].concat()).expect("the flags parse");
        args.serve.settings(&args.common).map(|s| s.list_scan)
    }

    /// A filtered page's budget and window are taken within their ranges
    /// (a zero budget too: every filtered page from a window) and refused
    /// outside them, never clamped.
    #[test]
    fn the_list_scan_is_refused_outside_its_range() {
        let taken = list_scan(&[]).expect("the defaults");
        assert_eq!((taken.steps, taken.window), (50_000, 2_000));
        assert_eq!(taken.postgres_time, Duration::from_millis(50));
        let smallest = [
            "--list-scan-steps",
            "0",
            "--list-scan-window",
            "1",
            "--list-scan-postgres-ms",
            "1",
        ];
        let taken = list_scan(&smallest).expect("the smallest");
        assert_eq!((taken.steps, taken.window), (0, 1));
        assert_eq!(taken.postgres_time, Duration::from_millis(1));
        for (flag, value, setting, problem) in [
            (
                "--list-scan-steps",
                "1000000001",
                "REGISTRY_LIST_SCAN_STEPS",
                "must be at most 1000000000",
            ),
            (
                "--list-scan-window",
                "0",
                "REGISTRY_LIST_SCAN_WINDOW",
                "must be at least 1",
            ),
            (
                "--list-scan-window",
                "100001",
                "REGISTRY_LIST_SCAN_WINDOW",
                "must be at most 100000",
            ),
            (
                "--list-scan-postgres-ms",
                "0",
                "REGISTRY_LIST_SCAN_POSTGRES_MS",
                "must be at least 1",
            ),
            (
                "--list-scan-postgres-ms",
                "60001",
                "REGISTRY_LIST_SCAN_POSTGRES_MS",
                "must be at most 60000",
            ),
        ] {
            match list_scan(&[flag, value]) {
                Err(Error::Config {
                    setting: said_setting,
                    problem: said,
                }) => assert_eq!((said_setting.as_str(), said.as_str()), (setting, problem)),
                other => panic!("{flag} {value}: {other:?}"),
            }
        }
    }

    fn tenant_rate(flags: &[&str]) -> Result<Option<crate::tenant_limits::TenantRate>, Error> {
        let args =
            Args::try_parse_from([&["registry-service"], flags].concat()).expect("the flags parse");
        args.serve.settings(&args.common).map(|s| s.tenant_rate)
    }

    /// Operator subjects are trimmed, and one no token could carry is
    /// refused.
    #[test]
    fn an_operator_subject_no_token_could_carry_is_refused() {
        let operators = |listed: &str| {
            let flags = ["registry-service", "--platform-operator-subjects", listed];
            let args = Args::try_parse_from(flags).expect("the flags parse");
            args.serve
                .settings(&args.common)
                .map(|s| s.platform_operator_subjects)
        };
        let listed = operators(" ops-1 ,,ops-2").expect("two subjects");
        assert_eq!(listed, ["ops-1", "ops-2"]);
        let widest = "o".repeat(256);
        assert_eq!(
            operators(&widest).expect("256 bytes"),
            std::slice::from_ref(&widest)
        );
        for (listed, problem) in [
            (
                format!("ops-1,{widest}o"),
                "an entry is longer than 256 bytes",
            ),
            (
                "ops\u{1b}[2J".to_owned(),
                "an entry holds a control character",
            ),
        ] {
            match operators(&listed) {
                Err(Error::Config {
                    setting,
                    problem: said,
                }) => assert_eq!(
                    (setting.as_str(), said.as_str()),
                    ("PLATFORM_OPERATOR_SUBJECTS", problem)
                ),
                other => panic!("{listed:?}: {other:?}"),
            }
        }
    }

    /// No tenant rate unless one is set; a burst defaults to the rate's
    /// minute; a burst without a rate, and values past a million a
    /// second, are refused.
    #[test]
    fn a_tenant_rate_is_off_unless_set_and_refused_when_malformed() {
        use crate::tenant_limits::TenantRate;
        assert_eq!(tenant_rate(&[]).ok(), Some(None));
        let rate = |per_minute, burst| Some(Some(TenantRate { per_minute, burst }));
        let per_minute = ["--tenant-calls-per-minute", "600"];
        assert_eq!(tenant_rate(&per_minute).ok(), rate(600, 600));
        let with_burst = [&per_minute[..], &["--tenant-call-burst", "20"]].concat();
        assert_eq!(tenant_rate(&with_burst).ok(), rate(600, 20));
        for (flags, setting, problem) in [
            (
                &["--tenant-call-burst", "20"][..],
                "REGISTRY_TENANT_CALL_BURST",
                "limits a tenant's call rate: set REGISTRY_TENANT_CALLS_PER_MINUTE too",
            ),
            (
                &["--tenant-calls-per-minute", "60000001"][..],
                "REGISTRY_TENANT_CALLS_PER_MINUTE",
                "must be at most 60000000",
            ),
            (
                &[
                    "--tenant-calls-per-minute",
                    "60",
                    "--tenant-call-burst",
                    "60000001",
                ][..],
                "REGISTRY_TENANT_CALL_BURST",
                "must be at most 60000000",
            ),
        ] {
            match tenant_rate(flags) {
                Err(Error::Config {
                    setting: said_setting,
                    problem: said,
                }) => assert_eq!((said_setting.as_str(), said.as_str()), (setting, problem)),
                other => panic!("{flags:?}: {other:?}"),
            }
        }
    }
}
