//! The system under measurement: the release crypto-service and
//! registry-service binaries (found beside this executable) over a fresh
//! database — a SQLite file in a temporary directory, or a new PostgreSQL
//! database `bench_<hex>` created on a maintenance URL and dropped at the
//! end — plus the gRPC client every request goes through.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use proto::v1 as pb;
use proto::v1::agent_service_client::AgentServiceClient;
use proto::v1::provider_service_client::ProviderServiceClient;
use proto::v1::runtime_service_client::RuntimeServiceClient;
use proto::v1::watch_service_client::WatchServiceClient;
use sea_orm::{ConnectionTrait, Database, Statement};
use tests::stack::{TestDatabase, start_registry};
use tests::{Launch, Process, start_crypto};
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};

/// crypto-service's key for the run (32 bytes of 0x11, base64).
const BENCH_KEY: &str = "ERERERERERERERERERERERERERERERERERERERERERE=";

/// Log filters: warnings and errors only, plus the one info line
/// ("… serving", target `<crate>::server`) that the harness reads the bound
/// address from. Narrower than `<crate>=info` on purpose: that would also
/// enable the per-request `#[instrument]` spans.
const CRYPTO_LOG_LEVEL: &str = "warn,crypto_service::server=info";
const REGISTRY_LOG_LEVEL: &str = "warn,registry_service::server=info";
/// Added to both filters when the services serve `/metrics`: the line
/// ("metrics serving", target `ops::metrics`) that names its address.
const METRICS_LOG_LEVEL: &str = ",ops::metrics=info";

/// The start of crypto-service's warning that `--insecure-dev-callers` is on.
const DEV_MODE_WARNING: &str = "INSECURE DEVELOPMENT MODE (--insecure-dev-callers)";

/// Which database the registry runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Db {
    /// A SQLite file (WAL, synchronous=FULL) in a temporary directory.
    Sqlite,
    /// A fresh database on the PostgreSQL server of `--postgres-url`.
    Postgres,
}

impl Db {
    /// Lower-case name, as in file names and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

/// Flags shared by every subcommand that starts the pair.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// Database backend of the registry.
    #[arg(long, value_enum, default_value_t = Db::Sqlite)]
    pub db: Db,
    /// PostgreSQL maintenance URL: a database `bench_<hex>` is created on
    /// it for the run and dropped at the end.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    pub postgres_url: String,
    /// The postmaster pid whose process tree is the database's CPU
    /// (default: the first line of `<data_directory>/postmaster.pid`).
    #[arg(long)]
    pub postgres_pid: Option<u32>,
    /// HTTP/2 connections the concurrent calls share, round-robin per
    /// call (each connection is one task on the server, so more than one
    /// lets the server use every core).
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Bearer token sent as `authorization` metadata on every call; by
    /// default one signed with the test secret the started registry trusts.
    #[arg(long)]
    pub token: Option<String>,
    /// Pins every thread of registry-service to these CPUs once it is
    /// started (a `taskset` list: `1`, `2-3`), so that its throughput is
    /// not also the bench client's: by default the client and both
    /// services share every core.
    #[arg(long)]
    pub registry_cpus: Option<String>,
    /// Pins every thread of crypto-service to these CPUs.
    #[arg(long)]
    pub crypto_cpus: Option<String>,
    /// Pins this client's threads to these CPUs.
    #[arg(long)]
    pub client_cpus: Option<String>,
}

/// Pins every thread of process `pid` to `cpus` (a `taskset` CPU list).
/// Threads it starts later inherit the pinning from their creator.
fn pin(pid: u32, cpus: &str) {
    let status = std::process::Command::new("taskset")
        .args(["--all-tasks", "--pid", "--cpu-list", cpus, &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run taskset (util-linux)");
    assert!(
        status.success(),
        "taskset --cpu-list {cpus} of {pid}: {status}"
    );
}

/// Settings beyond the ones every subcommand uses.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Both services also serve Prometheus `/metrics` on an ephemeral
    /// loopback port ([`Pair::metrics_addresses`]).
    pub metrics: bool,
    /// `REGISTRY_SQLITE_STATISTICS_SECONDS` for the registry (its default
    /// when `None`).
    pub sqlite_statistics_seconds: Option<u64>,
}

/// The two running services, their database and a client.
#[derive(Debug)]
pub struct Pair {
    crypto: Process,
    registry: Process,
    database: TestDatabase,
    /// The postmaster whose tree is the database's CPU (PostgreSQL only).
    pub postgres_pid: Option<u32>,
    /// Clients of the registry.
    pub api: Api,
}

impl Pair {
    /// Starts crypto-service, then registry-service over a fresh database.
    pub async fn start(target: &Target) -> Self {
        Self::start_with(target, Options::default()).await
    }

    /// [`Pair::start`] with `options`.
    pub async fn start_with(target: &Target, options: Options) -> Self {
        let with_metrics = |launch: Launch, level: &str| {
            if options.metrics {
                launch
                    .arg("--log-level")
                    .arg(format!("{level}{METRICS_LOG_LEVEL}"))
                    .arg("--metrics-listen")
                    .arg("127.0.0.1:0")
            } else {
                launch.arg("--log-level").arg(level)
            }
        };
        let crypto = start_crypto(with_metrics(
            Launch::default().env("ENCRYPTION_KEY", BENCH_KEY),
            CRYPTO_LOG_LEVEL,
        ))
        .await;
        let (database, postgres_pid) = match target.db {
            Db::Sqlite => {
                let dir = tempfile::tempdir().expect("a temporary directory for SQLite");
                let path = dir.path().join("registry.db");
                (TestDatabase::Sqlite { dir, path }, None)
            }
            Db::Postgres => {
                let name = format!("bench_{}", random_hex(8));
                let admin = Database::connect(&target.postgres_url)
                    .await
                    .expect("connect to --postgres-url");
                admin
                    .execute_unprepared(&format!("CREATE DATABASE {name}"))
                    .await
                    .expect("CREATE DATABASE on --postgres-url");
                let pid = match target.postgres_pid {
                    Some(pid) => Some(pid),
                    None => postmaster_pid(&admin).await,
                };
                let _ = admin.close().await;
                let database = TestDatabase::Postgres {
                    admin_url: target.postgres_url.clone(),
                    name,
                };
                (database, pid)
            }
        };
        // The deployment's defaults (the suite's stack lengthens a
        // filtered page's time on PostgreSQL to a minute).
        let mut launch = tests::stack::Stack::registry_as_deployed();
        if let Some(seconds) = options.sqlite_statistics_seconds {
            launch = launch.env("REGISTRY_SQLITE_STATISTICS_SECONDS", seconds.to_string());
        }
        let registry = start_registry(
            &database,
            &crypto.url(),
            with_metrics(launch, REGISTRY_LOG_LEVEL),
        )
        .await;
        if let Some(cpus) = &target.registry_cpus {
            pin(registry.pid(), cpus);
        }
        if let Some(cpus) = &target.crypto_cpus {
            pin(crypto.pid(), cpus);
        }
        if let Some(cpus) = &target.client_cpus {
            pin(std::process::id(), cpus);
        }
        // Without --token: a token of the test secret the registry above
        // verifies, with every role the workload needs.
        let token = target.token.clone().unwrap_or_else(|| {
            tests::auth::token("bench", "bench", &["admin", "editor", "runtime"])
        });
        let api = Api::connect(&registry.url(), target.connections, Some(&token)).await;
        Self {
            crypto,
            registry,
            database,
            postgres_pid,
            api,
        }
    }

    /// Another registry-service process over the same database and
    /// crypto-service (a second replica; PostgreSQL only: one SQLite file
    /// has one writer process). The caller terminates it.
    pub async fn start_replica(&self) -> Process {
        start_registry(
            &self.database,
            &self.crypto.url(),
            tests::stack::Stack::registry_as_deployed()
                .arg("--log-level")
                .arg(REGISTRY_LOG_LEVEL),
        )
        .await
    }

    /// registry-service's pid.
    pub fn registry_pid(&self) -> u32 {
        self.registry.pid()
    }

    /// crypto-service's pid.
    pub fn crypto_pid(&self) -> u32 {
        self.crypto.pid()
    }

    /// registry-service's gRPC URL (`http://127.0.0.1:PORT`).
    pub fn registry_url(&self) -> String {
        self.registry.url()
    }

    /// crypto-service's gRPC URL.
    pub fn crypto_url(&self) -> String {
        self.crypto.url()
    }

    /// The `/metrics` addresses (`HOST:PORT`) of registry-service and
    /// crypto-service, when started with [`Options::metrics`].
    pub fn metrics_addresses(&self) -> (Option<String>, Option<String>) {
        let listen = |process: &Process| process.log_field("metrics serving", "listen");
        (listen(&self.registry), listen(&self.crypto))
    }

    /// The registry's database (for direct SQL in `bench versions`).
    pub fn database(&self) -> &TestDatabase {
        &self.database
    }

    /// The registry's database URL.
    pub fn database_url(&self) -> String {
        self.database.url()
    }

    /// Warnings and errors the services logged (their "serving" lines
    /// excepted), but crypto-service's start-up warning that it runs in
    /// development mode: the bench starts it so on purpose (every loopback
    /// caller allowed, see [`start_crypto`]).
    pub fn complaints(&self) -> Vec<String> {
        let mut all = self.registry.output();
        all.push_str(&self.crypto.output());
        all.lines()
            .filter(|line| line.contains("\"WARN\"") || line.contains("\"ERROR\""))
            .filter(|line| !line.contains(DEV_MODE_WARNING))
            .map(str::to_owned)
            .collect()
    }

    /// Stops both services (SIGTERM) and drops the database.
    pub async fn stop(self) {
        let Self {
            crypto,
            registry,
            database,
            api,
            ..
        } = self;
        drop(api);
        registry.terminate().await;
        crypto.terminate().await;
        database.drop_database().await;
    }
}

/// The postmaster pid of the server `admin` is connected to: the first line
/// of `<data_directory>/postmaster.pid` (readable when this runs as root or
/// as the cluster's owner). `None`, with a warning, when it cannot be read.
async fn postmaster_pid(admin: &sea_orm::DatabaseConnection) -> Option<u32> {
    let row = admin
        .query_one_raw(Statement::from_string(
            admin.get_database_backend(),
            "SHOW data_directory",
        ))
        .await
        .ok()
        .flatten();
    let directory: Option<String> = row.and_then(|row| row.try_get_by_index(0).ok());
    let pid = directory.as_ref().and_then(|dir| {
        std::fs::read_to_string(format!("{dir}/postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    });
    if pid.is_none() {
        eprintln!(
            "warning: cannot read the postmaster pid (data_directory {directory:?}); \
             PostgreSQL CPU is not measured (pass --postgres-pid)"
        );
    }
    pid
}

/// `n` random bytes as lower-case hex.
pub fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes).expect("the OS random number generator");
    hex::encode(bytes)
}

/// The registry's clients over a small pool of HTTP/2 connections. Every
/// request is built by [`Api::request`], which adds the call metadata.
#[derive(Debug, Clone)]
pub struct Api {
    channels: Arc<[Channel]>,
    next: Arc<AtomicUsize>,
    authorization: Option<AsciiMetadataValue>,
}

impl Api {
    /// Opens `connections` channels to `url`.
    pub async fn connect(url: &str, connections: usize, token: Option<&str>) -> Self {
        let mut channels = Vec::new();
        for _ in 0..connections.max(1) {
            let channel = Endpoint::from_shared(url.to_owned())
                .expect("the registry's URL")
                .tcp_nodelay(true)
                .connect()
                .await
                .expect("connect to registry-service");
            channels.push(channel);
        }
        let authorization = token.map(|token| {
            MetadataValue::try_from(format!("Bearer {token}")).expect("--token is printable ASCII")
        });
        Self {
            channels: channels.into(),
            next: Arc::new(AtomicUsize::new(0)),
            authorization,
        }
    }

    /// Another pool of `connections` channels, to `url`, with the same
    /// call metadata.
    pub async fn connect_like(&self, url: &str, connections: usize) -> Self {
        let mut api = Self::connect(url, connections, None).await;
        api.authorization.clone_from(&self.authorization);
        api
    }

    /// Wraps `message` with the metadata every call carries.
    pub fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        request
    }

    /// The next channel, round-robin.
    fn channel(&self) -> Channel {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.channels.len();
        self.channels[index].clone()
    }

    /// ProviderService.CreateProvider.
    pub async fn create_provider(
        &self,
        message: pb::CreateProviderRequest,
    ) -> Result<Response<pb::Provider>, Status> {
        ProviderServiceClient::new(self.channel())
            .create_provider(self.request(message))
            .await
    }

    /// AgentService.CreateAgent.
    pub async fn create_agent(
        &self,
        message: pb::CreateAgentRequest,
    ) -> Result<Response<pb::Agent>, Status> {
        AgentServiceClient::new(self.channel())
            .create_agent(self.request(message))
            .await
    }

    /// AgentService.GetAgent.
    pub async fn get_agent(
        &self,
        message: pb::GetAgentRequest,
    ) -> Result<Response<pb::Agent>, Status> {
        AgentServiceClient::new(self.channel())
            .get_agent(self.request(message))
            .await
    }

    /// AgentService.ListAgents.
    pub async fn list_agents(
        &self,
        message: pb::ListAgentsRequest,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        AgentServiceClient::new(self.channel())
            .list_agents(self.request(message))
            .await
    }

    /// AgentService.DeleteAgent.
    pub async fn delete_agent(
        &self,
        message: pb::DeleteAgentRequest,
    ) -> Result<Response<()>, Status> {
        AgentServiceClient::new(self.channel())
            .delete_agent(self.request(message))
            .await
    }

    /// AgentService.DiffAgentVersions.
    pub async fn diff_agent_versions(
        &self,
        message: pb::DiffAgentVersionsRequest,
    ) -> Result<Response<pb::DiffAgentVersionsResponse>, Status> {
        AgentServiceClient::new(self.channel())
            .diff_agent_versions(self.request(message))
            .await
    }

    /// ProviderService.UpdateProvider.
    pub async fn update_provider(
        &self,
        message: pb::UpdateProviderRequest,
    ) -> Result<Response<pb::Provider>, Status> {
        ProviderServiceClient::new(self.channel())
            .update_provider(self.request(message))
            .await
    }

    /// AgentService.UpdateAgent.
    pub async fn update_agent(
        &self,
        message: pb::UpdateAgentRequest,
    ) -> Result<Response<pb::Agent>, Status> {
        AgentServiceClient::new(self.channel())
            .update_agent(self.request(message))
            .await
    }

    /// AgentService.SetAgentLabel.
    pub async fn set_agent_label(
        &self,
        message: pb::SetAgentLabelRequest,
    ) -> Result<Response<pb::Label>, Status> {
        AgentServiceClient::new(self.channel())
            .set_agent_label(self.request(message))
            .await
    }

    /// AgentService.ListAgentVersions.
    pub async fn list_agent_versions(
        &self,
        message: pb::ListAgentVersionsRequest,
    ) -> Result<Response<pb::ListAgentVersionsResponse>, Status> {
        AgentServiceClient::new(self.channel())
            .list_agent_versions(self.request(message))
            .await
    }

    /// AgentService.RollbackAgent.
    pub async fn rollback_agent(
        &self,
        message: pb::RollbackAgentRequest,
    ) -> Result<Response<pb::Agent>, Status> {
        AgentServiceClient::new(self.channel())
            .rollback_agent(self.request(message))
            .await
    }

    /// WatchService.WatchChanges: the stream of the caller's tenant's
    /// changes.
    pub async fn watch_changes(
        &self,
        message: pb::WatchChangesRequest,
    ) -> Result<Response<Streaming<pb::Change>>, Status> {
        WatchServiceClient::new(self.channel())
            .watch_changes(self.request(message))
            .await
    }

    /// RuntimeService.ResolveAgent (the only path that decrypts a key).
    pub async fn resolve_agent(
        &self,
        message: pb::ResolveAgentRequest,
    ) -> Result<Response<pb::ResolvedAgent>, Status> {
        RuntimeServiceClient::new(self.channel())
            .resolve_agent(self.request(message))
            .await
    }
}
