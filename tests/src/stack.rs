//! The whole pair for end-to-end tests: crypto-service and registry-service
//! as real processes, over a fresh database each — a SQLite file in a
//! temporary directory, or, when `TEST_POSTGRES_URL` is set, a new
//! PostgreSQL database that is dropped afterwards.

use std::path::PathBuf;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sea_orm::{ConnectionTrait, Database};
use tonic::transport::Channel;

use crate::{Launch, Process, binary, start_crypto};

/// The development key the stack's crypto-service runs with.
pub const STACK_KEY: [u8; 32] = [0x5a; 32];

/// Where the registry keeps its data for one test.
#[derive(Debug)]
pub enum TestDatabase {
    /// A SQLite file.
    Sqlite {
        /// Keeps the directory alive.
        dir: tempfile::TempDir,
        /// The database file.
        path: PathBuf,
    },
    /// A fresh PostgreSQL database.
    Postgres {
        /// Maintenance URL used to create and drop it.
        admin_url: String,
        /// Its name.
        name: String,
    },
}

impl TestDatabase {
    /// A fresh database of the backend this run tests.
    pub async fn fresh() -> Self {
        match std::env::var("TEST_POSTGRES_URL") {
            Ok(admin_url) if !admin_url.is_empty() => {
                let name = format!("registry_test_{}", random_hex());
                let admin = Database::connect(&admin_url)
                    .await
                    .expect("connect to TEST_POSTGRES_URL");
                admin
                    .execute_unprepared(&format!("CREATE DATABASE {name}"))
                    .await
                    .expect("create test database");
                Self::Postgres { admin_url, name }
            }
            _ => {
                let dir = tempfile::tempdir().expect("tempdir");
                let path = dir.path().join("registry.db");
                Self::Sqlite { dir, path }
            }
        }
    }

    /// The registry's DATABASE_URL.
    pub fn url(&self) -> String {
        match self {
            Self::Sqlite { path, .. } => format!("sqlite://{}", path.display()),
            Self::Postgres { admin_url, name } => replace_database(admin_url, name),
        }
    }

    /// Whether this is PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        matches!(self, Self::Postgres { .. })
    }

    /// Every byte the database keeps on disk for SQLite (file, WAL, shm),
    /// or a textual dump of every table for PostgreSQL.
    pub async fn stored_bytes(&self) -> Vec<u8> {
        match self {
            Self::Sqlite { path, .. } => {
                let mut bytes = Vec::new();
                for suffix in ["", "-wal", "-shm", "-journal"] {
                    let file = PathBuf::from(format!("{}{suffix}", path.display()));
                    if let Ok(content) = std::fs::read(&file) {
                        bytes.extend(content);
                    }
                }
                bytes
            }
            Self::Postgres { .. } => {
                let db = Database::connect(self.url()).await.expect("connect");
                let mut dump = Vec::new();
                for table in ["providers", "agents", "provider_versions", "agent_versions"] {
                    let rows = db
                        .query_all_raw(sea_orm::Statement::from_string(
                            db.get_database_backend(),
                            format!("SELECT row_to_json(t)::text AS j FROM {table} t"),
                        ))
                        .await
                        .expect("dump table");
                    for row in rows {
                        let text: String = row.try_get("", "j").expect("json text");
                        dump.extend(text.into_bytes());
                        dump.push(b'\n');
                    }
                }
                dump
            }
        }
    }

    /// The first column of every row of `sql`, as text (for checks; cast
    /// JSON columns with `CAST(… AS TEXT)`).
    pub async fn texts(&self, sql: &str) -> Vec<String> {
        let db = Database::connect(self.url()).await.expect("connect");
        db.query_all_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            sql.to_owned(),
        ))
        .await
        .expect("query")
        .into_iter()
        .filter_map(|row| {
            row.try_get_by_index::<Option<String>>(0)
                .expect("text column")
        })
        .collect()
    }

    /// Runs one writing SQL statement against the test database and
    /// answers how many rows it changed. The statement has committed when
    /// this returns: its connection is closed first (a `RETURNING` read
    /// through [`Database::count`] may leave SQLite's implicit transaction
    /// open until the pool's connection is dropped, after the next check).
    pub async fn execute(&self, sql: &str) -> u64 {
        let db = Database::connect(self.url()).await.expect("connect");
        let changed = db
            .execute_unprepared(sql)
            .await
            .expect("statement")
            .rows_affected();
        db.close().await.expect("close");
        changed
    }

    /// Runs one SQL query against the test database and answers the first
    /// column of its first row (for checks).
    pub async fn count(&self, sql: &str) -> i64 {
        let db = Database::connect(self.url()).await.expect("connect");
        let row = db
            .query_one_raw(sea_orm::Statement::from_string(
                db.get_database_backend(),
                sql.to_owned(),
            ))
            .await
            .expect("query")
            .expect("one row");
        row.try_get_by_index::<i64>(0).expect("count")
    }

    /// Drops a PostgreSQL database; SQLite files go with their directory.
    pub async fn drop_database(&self) {
        if let Self::Postgres { admin_url, name } = self {
            let admin = Database::connect(admin_url).await.expect("connect");
            let _ = admin
                .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await;
        }
    }
}

/// crypto-service and registry-service over a fresh database.
#[derive(Debug)]
pub struct Stack {
    /// The crypto-service process (None after [`Stack::stop_crypto`]).
    pub crypto: Option<Process>,
    /// The registry-service process.
    pub registry: Process,
    /// Its database.
    pub database: TestDatabase,
    /// The crypto endpoint the registry was given.
    pub crypto_endpoint: String,
}

impl Stack {
    /// Starts both services on ephemeral loopback ports; the registry
    /// verifies HS256 tokens signed with [`crate::auth::STACK_JWT_SECRET`].
    pub async fn start() -> Self {
        Self::start_with(Self::default_registry()).await
    }

    /// Starts both services; `registry` adds the registry's token settings
    /// (and any other arguments or environment).
    pub async fn start_with(registry: Launch) -> Self {
        Self::launch(Launch::default(), registry).await
    }

    /// Starts both services with the registry's list scan budget at 0:
    /// every filtered page (a List's, ListAuditEvents') is read from a
    /// window of the next `window` rows.
    pub async fn start_windowed(window: usize) -> Self {
        Self::start_with(
            Self::default_registry()
                .env("REGISTRY_LIST_SCAN_STEPS", "0")
                .env("REGISTRY_LIST_SCAN_WINDOW", window.to_string()),
        )
        .await
    }

    /// The registry settings [`Stack::start`] uses, to extend. A filtered
    /// page's time on PostgreSQL is a minute, not 50 ms: the suite's pages
    /// are exact, and a time (unlike SQLite's count of instructions) runs
    /// out sooner on a loaded machine. `a_bounded_read_stops_at_its_end_on_either_database`
    /// tests that budget, and `start_windowed` the windows it leads to.
    pub fn default_registry() -> Launch {
        Self::registry_as_deployed().env("REGISTRY_LIST_SCAN_POSTGRES_MS", "60000")
    }

    /// The registry with the suite's tokens and platform operator and
    /// otherwise a deployment's defaults: what a benchmark measures.
    pub fn registry_as_deployed() -> Launch {
        expect_stack_tokens(
            Launch::default().env("JWT_HS256_SECRET", crate::auth::STACK_JWT_SECRET),
        )
        .env("PLATFORM_OPERATOR_SUBJECTS", crate::auth::STACK_OPERATOR)
    }

    /// Starts both services with extra settings for each; crypto-service
    /// admits every loopback caller (see [`start_crypto`]) unless `crypto`
    /// names its callers.
    pub async fn launch(crypto: Launch, registry: Launch) -> Self {
        let crypto = start_crypto(crypto.env("ENCRYPTION_KEY", STANDARD.encode(STACK_KEY))).await;
        let crypto_endpoint = crypto.url();
        let database = TestDatabase::fresh().await;
        let registry = start_registry(&database, &crypto_endpoint, registry).await;
        Self {
            crypto: Some(crypto),
            registry,
            database,
            crypto_endpoint,
        }
    }

    /// A channel to the registry.
    pub async fn channel(&self) -> Channel {
        self.registry.channel().await
    }

    /// A channel to the registry that sends a token for `subject` in
    /// `tenant` with `roles` on every call.
    pub async fn channel_as(
        &self,
        subject: &str,
        tenant: &str,
        roles: &[&str],
    ) -> crate::auth::Authed {
        let token = crate::auth::token(subject, tenant, roles);
        crate::auth::authed(self.channel().await, crate::auth::Bearer::new(&token))
    }

    /// Stops crypto-service (SIGTERM) and waits for it to exit.
    pub async fn stop_crypto(&mut self) {
        if let Some(crypto) = self.crypto.take() {
            crypto.terminate().await;
        }
    }

    /// Everything both processes printed.
    pub fn logs(&self) -> String {
        let mut all = self.registry.output();
        if let Some(crypto) = &self.crypto {
            all.push_str(&crypto.output());
        }
        all
    }

    /// Stops both processes and drops the database; returns all logs.
    pub async fn finish(mut self) -> String {
        self.stop_crypto().await;
        let (_, registry_logs) = self.registry.terminate().await;
        self.database.drop_database().await;
        registry_logs
    }
}

/// `launch` with the audience and issuer of [`crate::auth::token`]'s
/// tokens, which a registry outside development mode needs to start: for
/// tests that bring a key source of their own.
pub fn expect_stack_tokens(launch: Launch) -> Launch {
    launch
        .env("JWT_AUDIENCE", crate::auth::STACK_AUDIENCE)
        .env("JWT_ISSUER", crate::auth::STACK_ISSUER)
}

/// crypto-service with the stack's key on a unix socket: a replacement started
/// after a kill takes the same address, so the registry needs no restart.
/// Callers are named by uid: this test process's (which also runs the
/// registry) holds both roles.
pub fn crypto_on_socket(socket: &std::path::Path) -> Launch {
    let me = format!("uid:{}", crate::current_uid());
    Launch::default()
        .env("ENCRYPTION_KEY", STANDARD.encode(STACK_KEY))
        .env("CRYPTO_REGISTRY_CLIENTS", &me)
        .env("CRYPTO_OPERATOR_CLIENTS", &me)
        .arg("--listen")
        .arg(format!("unix:{}", socket.display()))
}

/// Starts registry-service over `database`, calling crypto-service on the
/// unix socket `socket` (see [`crypto_on_socket`]) and re-checking its
/// dependencies every second, so readiness follows a crypto-service that
/// goes away and comes back within a test's deadlines.
pub async fn start_registry_on_crypto_socket(
    database: &TestDatabase,
    socket: &std::path::Path,
) -> Process {
    start_registry(
        database,
        &format!("unix:{}", socket.display()),
        Stack::default_registry()
            .arg("--health-interval-seconds")
            .arg("1"),
    )
    .await
}

/// Starts registry-service on an ephemeral port over `database`.
pub async fn start_registry(
    database: &TestDatabase,
    crypto_endpoint: &str,
    launch: Launch,
) -> Process {
    let launch = launch
        .arg("--log-format")
        .arg("json")
        .arg("--listen")
        .arg("127.0.0.1:0")
        .env("DATABASE_URL", database.url())
        .env("CRYPTO_ENDPOINT", crypto_endpoint)
        .env("CRYPTO_TIMEOUT_SECONDS", "2");
    Process::start(
        &binary("registry-service"),
        launch,
        "registry-service serving",
    )
    .await
}

fn replace_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let prefix = match base.rfind('/') {
        Some(slash)
            if base[..slash].contains("://") && slash > base.find("://").unwrap_or(0) + 2 =>
        {
            &base[..slash]
        }
        _ => base,
    };
    format!("{prefix}/{name}{query}")
}

fn random_hex() -> String {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("random");
    hex::encode(bytes)
}
