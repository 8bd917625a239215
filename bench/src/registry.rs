//! `bench registry`: the workload of the Python peer's `measure.py`
//! (`/work/shared/peers/seed-python/`) over gRPC against registry-service
//! and crypto-service — same phases, counts, concurrency and field values —
//! reporting per phase the throughput, latency percentiles and the CPU
//! time each server process (and PostgreSQL's process tree) spent per op.
//!
//! Phases, each run to completion before the next, with `-c` workers taking
//! items from one shared queue (measure.py's `run_pool`):
//!
//! | phase | calls |
//! |---|---|
//! | create_provider | P × CreateProvider, each with a random api key |
//! | create_agent | A × CreateAgent, providers round-robin |
//! | update_agent | U × UpdateAgent per agent, sequential per agent, agents in parallel |
//! | list_versions | A × ListAgentVersions (page_size 10) |
//! | rollback_agent | A × RollbackAgent to version 1 |
//! | get_provider_key | P × ResolveAgent of an agent on that provider (the decrypt path) |
//!
//! Every response is checked; a failed call or a failed check is an error.
//! Server CPU is utime + stime from /proc at each phase boundary (after a
//! settle pause, as measure.py does), divided by the phase's ops.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proto::v1 as pb;
use serde_json::{Value, json};
use tonic::{Response, Status};

use crate::pair::{Api, Pair, Target, random_hex};
use crate::stats::{
    CpuUsed, TreeCpu, cell, cells, cpu_seconds, percentile, round1, round3, round4, table_row,
};

/// The phases, in order (measure.py's `PHASES`).
pub const PHASES: [&str; 6] = [
    "create_provider",
    "create_agent",
    "update_agent",
    "list_versions",
    "rollback_agent",
    "get_provider_key",
];

/// Flags of `bench registry` (measure.py's names and defaults).
#[derive(Debug, Clone, clap::Args)]
pub struct RegistryArgs {
    #[command(flatten)]
    pub target: Target,
    /// Providers to create.
    #[arg(short = 'P', long, default_value_t = 50)]
    pub providers: usize,
    /// Agents to create.
    #[arg(short = 'A', long, default_value_t = 500)]
    pub agents: usize,
    /// Updates per agent.
    #[arg(short = 'U', long, default_value_t = 5)]
    pub updates: usize,
    /// Calls in flight (workers sharing one queue).
    #[arg(short = 'c', long, default_value_t = 16)]
    pub concurrency: usize,
    /// Idle milliseconds at each phase boundary, inside the phase's CPU
    /// window (measure.py's `--settle 0.2`).
    #[arg(long, default_value_t = 200)]
    pub settle_ms: u64,
    /// Skip the warm-up (2 providers and 4 agents through the full cycle).
    #[arg(long)]
    pub no_warmup: bool,
    /// Send a fresh request id (AIP-155) with every create, update and
    /// rollback: the write also remembers it (one more row in the same
    /// statement) after a lookup that finds none.
    #[arg(long)]
    pub request_ids: bool,
    /// Free text recorded in the JSON output.
    #[arg(long, default_value = "")]
    pub label: String,
    /// Also write the JSON summary here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// measure.py's agent field values at creation.
const ROLE: &str = "Senior Data Analyst";
const GOAL: &str = "Analyze complex datasets and report actionable findings";
const BACKSTORY: &str = "Expert in data science with a decade of experience in analytics teams.";
const TEMPERATURE: f64 = 0.7;
const MAX_ITER: i32 = 15;
/// measure.py's provider types, round-robin.
const PROVIDER_TYPES: [pb::ProviderType; 3] = [
    pb::ProviderType::Openai,
    pb::ProviderType::Anthropic,
    pb::ProviderType::Ollama,
];

/// Runs the workload and prints the report; exits 1 when a call failed.
pub async fn run(args: RegistryArgs) {
    assert!(
        args.providers >= 1 && args.agents >= args.providers,
        "need at least one provider and at least as many agents as providers \
         (get_provider_key resolves agent i for provider i)"
    );
    let pair = Pair::start(&args.target).await;
    let summary = measure(&pair, &args).await;
    let complaints = pair.complaints();
    pair.stop().await;

    print_report(&summary, &args);
    if !complaints.is_empty() {
        eprintln!("the services logged {} warnings/errors:", complaints.len());
        for line in complaints.iter().take(10) {
            eprintln!("  {line}");
        }
    }
    if let Some(path) = &args.out {
        let text = serde_json::to_string_pretty(&summary).expect("JSON summary");
        std::fs::write(path, text + "\n").expect("write --out");
    }
    if summary["total"]["errors"].as_u64().unwrap_or(0) > 0 {
        std::process::exit(1);
    }
}

/// CPU readings of every measured process at one moment.
#[derive(Debug, Clone)]
struct Readings {
    registry: TreeCpu,
    crypto: TreeCpu,
    database: TreeCpu,
    client: f64,
    at: Instant,
}

/// CPU used between two readings.
#[derive(Debug, Clone, Copy, Default)]
struct Used {
    registry: CpuUsed,
    crypto: CpuUsed,
    database: CpuUsed,
    client: f64,
}

impl Used {
    /// registry + crypto seconds on CPU (schedstat).
    fn server(&self) -> f64 {
        self.registry.runtime + self.crypto.runtime
    }

    /// registry + crypto (user, system) seconds from ticks.
    fn server_ticks(&self) -> (f64, f64) {
        (
            self.registry.user + self.crypto.user,
            self.registry.system + self.crypto.system,
        )
    }
}

impl Readings {
    fn take(pair: &Pair) -> Self {
        let postgres: Vec<u32> = pair.postgres_pid.into_iter().collect();
        Self {
            registry: TreeCpu::read(&[pair.registry_pid()]),
            crypto: TreeCpu::read(&[pair.crypto_pid()]),
            database: TreeCpu::read(&postgres),
            client: cpu_seconds(std::process::id()),
            at: Instant::now(),
        }
    }

    fn since(&self, earlier: &Self) -> Used {
        Used {
            registry: self.registry.since(&earlier.registry),
            crypto: self.crypto.since(&earlier.crypto),
            database: self.database.since(&earlier.database),
            client: self.client - earlier.client,
        }
    }
}

async fn measure(pair: &Pair, args: &RegistryArgs) -> Value {
    let settle = Duration::from_millis(args.settle_ms);
    if !args.no_warmup {
        let warm = Workload::new(pair.api.clone(), "w", args.updates, args.request_ids);
        warm.warm_up().await;
        let failures = warm.recorder.samples();
        assert!(failures.is_empty(), "warm-up failed: {failures:?}");
    }

    tokio::time::sleep(settle).await;
    let idle_start = Readings::take(pair);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_end = Readings::take(pair);
    let idle = idle_end.since(&idle_start);
    let idle_seconds = idle_end.at.duration_since(idle_start.at).as_secs_f64();
    let per_second = |seconds: f64| round1(seconds / idle_seconds * 1e6);

    let workload = Arc::new(Workload::new(
        pair.api.clone(),
        "r",
        args.updates,
        args.request_ids,
    ));
    let mut phases = Vec::new();
    let start = Readings::take(pair);
    let mut providers = Vec::new();
    let mut agents = Vec::new();
    for phase in PHASES {
        let before = Readings::take(pair);
        let wall = match phase {
            "create_provider" => {
                let items = (0..args.providers).collect();
                let wall = run_pool(items, args.concurrency, {
                    let w = Arc::clone(&workload);
                    move |i| {
                        let w = Arc::clone(&w);
                        async move { w.create_provider(i).await }
                    }
                })
                .await;
                providers = workload.providers();
                assert!(
                    !providers.is_empty(),
                    "no provider was created: {:?}",
                    workload.recorder.samples()
                );
                wall
            }
            "create_agent" => {
                let items = (0..args.agents)
                    .map(|i| (i, providers[i % providers.len()].clone()))
                    .collect();
                let wall = run_pool(items, args.concurrency, {
                    let w = Arc::clone(&workload);
                    move |(i, provider)| {
                        let w = Arc::clone(&w);
                        async move { w.create_agent(i, &provider).await }
                    }
                })
                .await;
                agents = workload.agents();
                wall
            }
            "update_agent" => {
                run_pool(agents.clone(), args.concurrency, {
                    let w = Arc::clone(&workload);
                    move |agent| {
                        let w = Arc::clone(&w);
                        async move { w.update_series(&agent).await }
                    }
                })
                .await
            }
            "list_versions" => {
                run_pool(agents.clone(), args.concurrency, {
                    let w = Arc::clone(&workload);
                    move |agent| {
                        let w = Arc::clone(&w);
                        async move { w.list_versions(&agent).await }
                    }
                })
                .await
            }
            "rollback_agent" => {
                run_pool(agents.clone(), args.concurrency, {
                    let w = Arc::clone(&workload);
                    move |agent| {
                        let w = Arc::clone(&w);
                        async move { w.rollback(&agent).await }
                    }
                })
                .await
            }
            _ => {
                let items = key_reads(&providers, &agents);
                run_pool(items, args.concurrency, {
                    let w = Arc::clone(&workload);
                    move |(provider, agent_id)| {
                        let w = Arc::clone(&w);
                        async move { w.get_provider_key(&provider, &agent_id).await }
                    }
                })
                .await
            }
        };
        tokio::time::sleep(settle).await;
        let used = Readings::take(pair).since(&before);
        phases.push((phase, wall, used));
    }
    let whole = Readings::take(pair).since(&start);

    let mut ops = serde_json::Map::new();
    let mut total_ops = 0usize;
    let mut total_wall = 0.0;
    for (phase, wall, used) in &phases {
        let (count, errors, latencies) = workload.recorder.phase(phase);
        total_ops += count;
        total_wall += wall.as_secs_f64();
        ops.insert(
            (*phase).to_owned(),
            phase_json(count, errors, *wall, &latencies, used, pair),
        );
    }
    let total_per_op = |seconds: f64| per_op(seconds, total_ops);
    json!({
        "tool": "bench registry",
        "config": {
            "db": args.target.db.name(),
            "providers": args.providers,
            "agents": args.agents,
            "updates": args.updates,
            "key_reads": 1,
            "concurrency": args.concurrency,
            "connections": args.target.connections,
            "warmup": !args.no_warmup,
            "settle_s": settle.as_secs_f64(),
            "label": args.label,
        },
        "server": {
            "registry_pid": pair.registry_pid(),
            "crypto_pid": pair.crypto_pid(),
            "db_pids": pair.postgres_pid.map(|pid| TreeCpu::read(&[pid]).pids()),
            "idle_cpu_us_per_s": {
                "registry": per_second(idle.registry.runtime),
                "crypto": per_second(idle.crypto.runtime),
                "db": pair.postgres_pid.map(|_| per_second(idle.database.ticks_total())),
            },
        },
        "ops": ops,
        "total": {
            "ops": total_ops,
            "errors": workload.recorder.errors(),
            "wall_s": round4(total_wall),
            "ops_per_s": round1(total_ops as f64 / total_wall),
            "registry_cpu_us_per_op": total_per_op(whole.registry.runtime),
            "crypto_cpu_us_per_op": total_per_op(whole.crypto.runtime),
            "server_cpu_us_per_op": total_per_op(whole.server()),
            "server_cpu_s": round4(whole.server()),
            "server_cpu_ticks_us_per_op": total_per_op(whole.server_ticks().0 + whole.server_ticks().1),
            "db_cpu_us_per_op": pair.postgres_pid.map(|_| total_per_op(whole.database.ticks_total())),
            "db_cpu_runtime_us_per_op": pair.postgres_pid.map(|_| total_per_op(whole.database.runtime)),
            "client_cpu_us_per_op": total_per_op(whole.client),
        },
        "error_samples": workload.recorder.samples(),
    })
}

fn phase_json(
    count: usize,
    errors: usize,
    wall: Duration,
    latencies: &[Duration],
    used: &Used,
    pair: &Pair,
) -> Value {
    let phase_per_op = |seconds: f64| per_op(seconds, count);
    let ms = |d: Duration| round3(d.as_secs_f64() * 1e3);
    let mean = latencies.iter().sum::<Duration>() / u32::try_from(count.max(1)).unwrap_or(1);
    let (server_user, server_system) = used.server_ticks();
    json!({
        "count": count,
        "errors": errors,
        "wall_s": round4(wall.as_secs_f64()),
        "ops_per_s": round1(count as f64 / wall.as_secs_f64()),
        "p50_ms": ms(percentile(latencies, 0.50)),
        "p99_ms": ms(percentile(latencies, 0.99)),
        "mean_ms": ms(mean),
        "registry_cpu_us_per_op": phase_per_op(used.registry.runtime),
        "crypto_cpu_us_per_op": phase_per_op(used.crypto.runtime),
        "server_cpu_us_per_op": phase_per_op(used.server()),
        "server_cpu_ticks_us_per_op": phase_per_op(server_user + server_system),
        "server_user_us_per_op": phase_per_op(server_user),
        "server_sys_us_per_op": phase_per_op(server_system),
        "db_cpu_us_per_op": pair.postgres_pid.map(|_| phase_per_op(used.database.ticks_total())),
        "db_cpu_runtime_us_per_op": pair.postgres_pid.map(|_| phase_per_op(used.database.runtime)),
        "client_cpu_us_per_op": phase_per_op(used.client),
    })
}

fn per_op(seconds: f64, ops: usize) -> f64 {
    round1(seconds / ops.max(1) as f64 * 1e6)
}

/// The per-phase figures of the report table, in column order.
const PHASE_COLUMNS: [&str; 11] = [
    "count",
    "errors",
    "ops_per_s",
    "p50_ms",
    "p99_ms",
    "registry_cpu_us_per_op",
    "crypto_cpu_us_per_op",
    "server_cpu_us_per_op",
    "server_cpu_ticks_us_per_op",
    "db_cpu_us_per_op",
    "client_cpu_us_per_op",
];

fn print_report(summary: &Value, args: &RegistryArgs) {
    let db = args.target.db.name();
    println!(
        "\nbench registry — {db}, P={} A={} U={} concurrency {}, {} connection(s)",
        args.providers, args.agents, args.updates, args.concurrency, args.target.connections
    );
    println!(
        "| op | count | errors | ops/s | p50 ms | p99 ms | registry CPU µs/op | crypto CPU µs/op | server CPU µs/op | (ticks) | PG CPU µs/op | client CPU µs/op |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for phase in PHASES {
        let figures = cells(&summary["ops"][phase], &PHASE_COLUMNS);
        println!(
            "{}",
            table_row(std::iter::once(phase.to_owned()).chain(figures))
        );
    }
    // The total has no percentiles; its server CPU is the headline figure.
    let t = &summary["total"];
    let [count, errors, ops_per_s] = ["ops", "errors", "ops_per_s"].map(|key| cell(&t[key]));
    let cpu = cells(t, &PHASE_COLUMNS[5..]);
    let mut row = vec![
        "**all**".to_owned(),
        count,
        errors,
        ops_per_s,
        String::new(),
        String::new(),
    ];
    row.extend(cpu);
    row[8] = format!("**{}**", row[8]);
    println!("{}", table_row(row));
    let idle = &summary["server"]["idle_cpu_us_per_s"];
    println!(
        "idle CPU before the run (µs/s): registry {}, crypto {}, PostgreSQL {}",
        cell(&idle["registry"]),
        cell(&idle["crypto"]),
        cell(&idle["db"])
    );
    if let Some(samples) = summary["error_samples"].as_array()
        && !samples.is_empty()
    {
        println!("errors (first {}):", samples.len());
        for sample in samples {
            println!("  {}", cell(sample));
        }
    }
}

/// For each provider, an agent assigned to it (agent i uses provider
/// i mod P, so agent j for provider j).
fn key_reads(providers: &[ProviderEntry], agents: &[AgentEntry]) -> Vec<(ProviderEntry, String)> {
    providers
        .iter()
        .filter_map(|provider| {
            agents
                .iter()
                .find(|agent| agent.provider_id == provider.id)
                .map(|agent| (provider.clone(), agent.id.clone()))
        })
        .collect()
}

/// Runs `op` over `items` with `concurrency` workers taking items from one
/// shared queue; returns the wall time.
async fn run_pool<I, F, Fut>(items: Vec<I>, concurrency: usize, op: F) -> Duration
where
    I: Send + 'static,
    F: Fn(I) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let queue = Arc::new(Mutex::new(VecDeque::from(items)));
    let op = Arc::new(op);
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let queue = Arc::clone(&queue);
        let op = Arc::clone(&op);
        workers.push(tokio::spawn(async move {
            loop {
                let item = queue.lock().ok().and_then(|mut queue| queue.pop_front());
                match item {
                    Some(item) => op(item).await,
                    None => break,
                }
            }
        }));
    }
    for worker in workers {
        worker.await.expect("a worker panicked");
    }
    start.elapsed()
}

/// Latencies and errors per phase.
#[derive(Debug, Default)]
struct Recorder {
    inner: Mutex<Recorded>,
}

#[derive(Debug, Default)]
struct Recorded {
    latencies: HashMap<&'static str, Vec<Duration>>,
    errors: HashMap<&'static str, usize>,
    samples: Vec<String>,
}

impl Recorder {
    /// Records one call; returns the checked value when it succeeded.
    fn record<T>(&self, op: &'static str, took: Duration, outcome: Result<T, String>) -> Option<T> {
        let Ok(mut inner) = self.inner.lock() else {
            return None;
        };
        inner.latencies.entry(op).or_default().push(took);
        match outcome {
            Ok(value) => Some(value),
            Err(why) => {
                *inner.errors.entry(op).or_default() += 1;
                if inner.samples.len() < 10 {
                    inner.samples.push(format!("{op}: {why}"));
                }
                None
            }
        }
    }

    /// (calls, errors, sorted latencies) of one phase.
    fn phase(&self, op: &str) -> (usize, usize, Vec<Duration>) {
        let Ok(inner) = self.inner.lock() else {
            return (0, 0, Vec::new());
        };
        let mut latencies = inner.latencies.get(op).cloned().unwrap_or_default();
        latencies.sort();
        let errors = inner.errors.get(op).copied().unwrap_or(0);
        (latencies.len(), errors, latencies)
    }

    fn errors(&self) -> usize {
        self.inner
            .lock()
            .map(|inner| inner.errors.values().sum())
            .unwrap_or(0)
    }

    fn samples(&self) -> Vec<String> {
        self.inner
            .lock()
            .map(|inner| inner.samples.clone())
            .unwrap_or_default()
    }
}

/// A provider created by the workload, and the key sent with it.
#[derive(Debug, Clone)]
struct ProviderEntry {
    id: String,
    api_key: String,
}

/// An agent created by the workload.
#[derive(Debug, Clone)]
struct AgentEntry {
    id: String,
    provider_id: String,
}

/// The calls of measure.py's `Workload`, with their checks.
#[derive(Debug)]
struct Workload {
    api: Api,
    recorder: Recorder,
    /// Makes names unique per run (measure.py: `r<pid><time>`).
    tag: String,
    updates: usize,
    /// Whether writes carry a request id.
    request_ids: bool,
    providers: Mutex<Vec<(usize, ProviderEntry)>>,
    agents: Mutex<Vec<(usize, AgentEntry)>>,
}

impl Workload {
    fn new(api: Api, prefix: &str, updates: usize, request_ids: bool) -> Self {
        Self {
            api,
            recorder: Recorder::default(),
            tag: format!("{prefix}{}", random_hex(4)),
            updates,
            request_ids,
            providers: Mutex::new(Vec::new()),
            agents: Mutex::new(Vec::new()),
        }
    }

    /// measure.py's warm-up: 2 providers and 4 agents through the full
    /// cycle, one call at a time.
    async fn warm_up(&self) {
        for i in 0..2 {
            self.create_provider(i).await;
        }
        let providers = self.providers();
        assert!(
            !providers.is_empty(),
            "warm-up: no provider was created: {:?}",
            self.recorder.samples()
        );
        for i in 0..4 {
            self.create_agent(i, &providers[i % providers.len()]).await;
        }
        let agents = self.agents();
        for agent in &agents {
            self.update_series(agent).await;
            self.list_versions(agent).await;
            self.rollback(agent).await;
        }
        for (provider, agent_id) in key_reads(&providers, &agents) {
            self.get_provider_key(&provider, &agent_id).await;
        }
    }

    /// A fresh request id, or none.
    fn request_id(&self) -> String {
        if self.request_ids {
            uuid::Uuid::now_v7().to_string()
        } else {
            String::new()
        }
    }

    /// Created providers in creation-index order.
    fn providers(&self) -> Vec<ProviderEntry> {
        let mut all = self.providers.lock().map(|p| p.clone()).unwrap_or_default();
        all.sort_by_key(|(i, _)| *i);
        all.into_iter().map(|(_, p)| p).collect()
    }

    /// Created agents in creation-index order.
    fn agents(&self) -> Vec<AgentEntry> {
        let mut all = self.agents.lock().map(|a| a.clone()).unwrap_or_default();
        all.sort_by_key(|(i, _)| *i);
        all.into_iter().map(|(_, a)| a).collect()
    }

    /// Times `call`, then checks its response with `check`.
    async fn call<R, T>(
        &self,
        op: &'static str,
        call: impl Future<Output = Result<Response<R>, Status>>,
        check: impl FnOnce(R) -> Result<T, String>,
    ) -> Option<T> {
        let began = Instant::now();
        let result = call.await;
        let took = began.elapsed();
        let outcome = result
            .map_err(|status| format!("{:?}: {}", status.code(), status.message()))
            .and_then(|response| check(response.into_inner()));
        self.recorder.record(op, took, outcome)
    }

    async fn create_provider(&self, i: usize) {
        let api_key = format!("sk-{}-{i:06}-{}", self.tag, random_hex(12));
        let request = pb::CreateProviderRequest {
            provider: Some(pb::Provider {
                name: format!("provider-{}-{i}", self.tag),
                provider_type: PROVIDER_TYPES[i % PROVIDER_TYPES.len()].into(),
                model_name: "gpt-4".to_owned(),
                api_key: api_key.clone(),
                // measure.py's config {"timeout": 30, "region": …}: the
                // contract has a timeout; a region has no field.
                default_parameters: Some(pb::ModelParameters {
                    timeout_seconds: Some(30),
                    ..Default::default()
                }),
                is_default: i == 0,
                ..Default::default()
            }),
            change_description: String::new(),
            request_id: self.request_id(),
            ..Default::default()
        };
        let created = self
            .call("create_provider", self.api.create_provider(request), |p| {
                if !p.api_key.is_empty() || !p.api_key_set {
                    return Err("api key not masked".to_owned());
                }
                if p.id.is_empty() || p.version != 1 {
                    return Err(format!("unexpected provider id {:?} v{}", p.id, p.version));
                }
                Ok(p.id)
            })
            .await;
        if let (Some(id), Ok(mut providers)) = (created, self.providers.lock()) {
            providers.push((i, ProviderEntry { id, api_key }));
        }
    }

    async fn create_agent(&self, i: usize, provider: &ProviderEntry) {
        let request = pb::CreateAgentRequest {
            agent: Some(pb::Agent {
                name: format!("agent-{}-{i}", self.tag),
                role: ROLE.to_owned(),
                goal: GOAL.to_owned(),
                backstory: BACKSTORY.to_owned(),
                llm_provider_id: Some(provider.id.clone()),
                temperature: Some(TEMPERATURE),
                // measure.py's `max_tokens: 2048`.
                llm_overrides: Some(pb::ModelParameters {
                    max_tokens: Some(2048),
                    ..Default::default()
                }),
                allow_delegation: Some(false),
                verbose: Some(false),
                cache: Some(true),
                max_iter: Some(MAX_ITER),
                max_rpm: Some(60),
                max_execution_time: Some(300),
                allow_code_execution: Some(false),
                respect_context_window: Some(true),
                max_retry_limit: Some(2),
                ..Default::default()
            }),
            change_description: String::new(),
            request_id: self.request_id(),
            ..Default::default()
        };
        let created = self
            .call("create_agent", self.api.create_agent(request), |a| {
                if a.id.is_empty() || a.version != 1 || a.goal != GOAL {
                    return Err(format!("unexpected agent {:?} v{}", a.id, a.version));
                }
                Ok(a.id)
            })
            .await;
        if let (Some(id), Ok(mut agents)) = (created, self.agents.lock()) {
            let provider_id = provider.id.clone();
            agents.push((i, AgentEntry { id, provider_id }));
        }
    }

    /// U updates of one agent, one after the other.
    async fn update_series(&self, agent: &AgentEntry) {
        for u in 1..=self.updates {
            let step = i32::try_from(u).unwrap_or(i32::MAX);
            // measure.py: round(0.7 + 0.05 * u, 2).
            let temperature = ((TEMPERATURE + 0.05 * f64::from(step)) * 100.0).round() / 100.0;
            let max_iter = MAX_ITER + step;
            let goal = format!("Analyze complex datasets (revision {u})");
            let request = pb::UpdateAgentRequest {
                agent: Some(pb::Agent {
                    id: agent.id.clone(),
                    temperature: Some(temperature),
                    max_iter: Some(max_iter),
                    goal: goal.clone(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["temperature".into(), "max_iter".into(), "goal".into()],
                }),
                change_description: String::new(),
                request_id: self.request_id(),
                ..Default::default()
            };
            self.call("update_agent", self.api.update_agent(request), |a| {
                if a.max_iter == Some(max_iter)
                    && a.goal == goal
                    && a.temperature == Some(temperature)
                {
                    Ok(())
                } else {
                    Err("not applied".to_owned())
                }
            })
            .await;
        }
    }

    async fn list_versions(&self, agent: &AgentEntry) {
        let expect_total = self.updates + 1;
        let request = pb::ListAgentVersionsRequest {
            agent_id: agent.id.clone(),
            page_size: 10,
            page_token: String::new(),
        };
        self.call(
            "list_versions",
            self.api.list_agent_versions(request),
            |page| {
                let first = page.versions.first();
                let newest = first.map_or(0, |v| v.version_number);
                let total_ok = usize::try_from(page.total_size) == Ok(expect_total);
                if !total_ok
                    || page.versions.len() != expect_total.min(10)
                    || usize::try_from(newest) != Ok(expect_total)
                {
                    return Err(format!(
                        "unexpected history total={} len={} newest={newest}",
                        page.total_size,
                        page.versions.len()
                    ));
                }
                if expect_total > 1 && first.is_some_and(|v| v.diff.is_empty()) {
                    return Err("empty diff".to_owned());
                }
                Ok(())
            },
        )
        .await;
    }

    async fn rollback(&self, agent: &AgentEntry) {
        let request = pb::RollbackAgentRequest {
            agent_id: agent.id.clone(),
            version_number: 1,
            etag: String::new(),
            change_description: String::new(),
            request_id: self.request_id(),
            ..Default::default()
        };
        self.call("rollback_agent", self.api.rollback_agent(request), |a| {
            if a.goal == GOAL && a.max_iter == Some(MAX_ITER) && a.temperature == Some(TEMPERATURE)
            {
                Ok(())
            } else {
                Err("not rolled back".to_owned())
            }
        })
        .await;
    }

    async fn get_provider_key(&self, provider: &ProviderEntry, agent_id: &str) {
        let request = pb::ResolveAgentRequest {
            agent_id: agent_id.to_owned(),
            version_number: None,
            // A full resolution each time: the peer has no cheap re-resolve.
            if_none_match: String::new(),
            label: String::new(),
        };
        self.call("get_provider_key", self.api.resolve_agent(request), |r| {
            let provider_ok = r
                .provider
                .as_ref()
                .is_some_and(|p| p.id == provider.id && p.api_key.is_empty());
            if provider_ok && r.api_key == provider.api_key {
                Ok(())
            } else {
                Err("wrong plaintext".to_owned())
            }
        })
        .await;
    }
}
