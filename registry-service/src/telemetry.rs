//! The registry's own metrics (beyond the per-RPC series every server has):
//! calls to crypto-service and their latency (go-grpc-prometheus's client
//! series, `grpc_client_handled_total` and `grpc_client_handling_seconds`,
//! labelled as the server series are), dependency status, the
//! database pool, how many writes SQLite's group commits carry, what
//! became of the updates' guesses (`store::recent`), and the fetches of an
//! identity provider's signing keys (`auth::jwks`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use ops::metrics::{LatencyFamily, MethodLabels, OutcomeLabels, latency_histogram};

/// The service the registry calls, as `grpc_service` names it.
const CRYPTO_SERVICE: &str = "agentregistry.crypto.v1.CryptoService";

/// Labels naming a dependency.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DependencyLabels {
    /// `database` or `crypto-service`.
    pub dependency: String,
}

/// Labels of pool connection counts.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    /// `idle` or `in_use`.
    pub state: String,
}

/// Labels of the updates' guesses.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GuessLabels {
    /// `written`, `stale` or `absent`.
    pub outcome: String,
}

/// Labels of the identity provider's key fetches.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JwksFetchLabels {
    /// `start-up`, `schedule` or `unknown-kid`.
    pub trigger: String,
    /// `ok` or `failed`.
    pub outcome: String,
}

/// The registry-specific series.
#[derive(Debug, Clone)]
pub struct RegistryMetrics {
    /// Calls to crypto-service by method and status code.
    pub crypto_calls: Family<OutcomeLabels, Counter>,
    /// Their latency by method.
    pub crypto_latency: LatencyFamily<MethodLabels>,
    /// 1 while a dependency answers its check, 0 while it does not.
    pub dependency_up: Family<DependencyLabels, Gauge>,
    /// Database pool connections by state.
    pub pool_connections: Family<PoolLabels, Gauge>,
    /// Agent writes per SQLite group commit (1, 2, 4 … 64).
    pub sqlite_group_writes: Histogram,
    /// Agent updates and rollbacks by what became of the agent this
    /// process last wrote, their first guess of the row.
    pub agent_write_guesses: Family<GuessLabels, Counter>,
    /// Fetches of the identity provider's signing keys.
    pub jwks_fetches: Family<JwksFetchLabels, Counter>,
}

impl Default for RegistryMetrics {
    fn default() -> Self {
        Self {
            crypto_calls: Family::default(),
            crypto_latency: Family::new_with_constructor(latency_histogram),
            dependency_up: Family::default(),
            pool_connections: Family::default(),
            sqlite_group_writes: Histogram::new(exponential_buckets(1.0, 2.0, 7)),
            agent_write_guesses: Family::default(),
            jwks_fetches: Family::default(),
        }
    }
}

impl RegistryMetrics {
    /// Registers every series in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "grpc_client_handled",
            "Total number of RPCs completed by the client, regardless of success or failure (the registry's calls to crypto-service)",
            self.crypto_calls.clone(),
        );
        registry.register(
            "grpc_client_handling_seconds",
            "Histogram of response latency (seconds) of the gRPC until it is finished by the application (the registry's calls to crypto-service)",
            self.crypto_latency.clone(),
        );
        registry.register(
            "registry_dependency_up",
            "1 while a dependency answered its last readiness check",
            self.dependency_up.clone(),
        );
        registry.register(
            "registry_db_pool_connections",
            "Database pool connections, by state",
            self.pool_connections.clone(),
        );
        registry.register(
            "registry_sqlite_group_commit_writes",
            "Agent writes per SQLite transaction of the group commit (one fsync each)",
            self.sqlite_group_writes.clone(),
        );
        registry.register(
            "registry_agent_write_guesses",
            "Agent updates and rollbacks by what became of the agent as this process last wrote it: \
             written from it without a read, stale (the row was read), or absent",
            self.agent_write_guesses.clone(),
        );
        registry.register(
            "registry_jwks_fetches",
            "Fetches of the identity provider's signing keys, by trigger (start-up, schedule, \
             unknown-kid) and outcome",
            self.jwks_fetches.clone(),
        );
    }

    /// Records one fetch of the provider's keys; the provider counts as a
    /// dependency (`identity-provider`) that is up while its last fetch
    /// succeeded.
    pub fn jwks_fetch(&self, trigger: &str, ok: bool) {
        self.jwks_fetches
            .get_or_create(&JwksFetchLabels {
                trigger: trigger.to_owned(),
                outcome: if ok { "ok" } else { "failed" }.to_owned(),
            })
            .inc();
        self.set_up("identity-provider", ok);
    }

    /// The counter of guesses with `outcome` (shares its value with the
    /// series).
    pub fn agent_write_guess(&self, outcome: &str) -> Counter {
        self.agent_write_guesses
            .get_or_create(&GuessLabels {
                outcome: outcome.to_owned(),
            })
            .clone()
    }

    /// Records one call to crypto-service's unary method `method`.
    pub fn crypto_call(&self, method: &'static str, code: tonic::Code, seconds: f64) {
        let labels = MethodLabels {
            grpc_type: "unary",
            grpc_service: CRYPTO_SERVICE,
            grpc_method: method,
        };
        self.crypto_calls
            .get_or_create(&labels.with_code(code))
            .inc();
        self.crypto_latency.get_or_create(&labels).observe(seconds);
    }

    /// Records whether `dependency` answered.
    pub fn set_up(&self, dependency: &str, up: bool) {
        self.dependency_up
            .get_or_create(&DependencyLabels {
                dependency: dependency.to_owned(),
            })
            .set(i64::from(up));
    }

    /// Records the pool's connection counts.
    pub fn set_pool(&self, idle: usize, total: u32) {
        let idle = i64::try_from(idle).unwrap_or(i64::MAX);
        let total = i64::from(total);
        self.pool_connections
            .get_or_create(&PoolLabels {
                state: "idle".into(),
            })
            .set(idle);
        self.pool_connections
            .get_or_create(&PoolLabels {
                state: "in_use".into(),
            })
            .set((total - idle).max(0));
    }
}
