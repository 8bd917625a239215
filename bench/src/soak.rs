//! `bench soak`: a long run at high concurrency with a mixed read/write
//! workload, to show that the pair stays correct and its memory stays flat
//! under sustained load (issue 7).
//!
//! The run: start the pair over a fresh database (pair.rs), seed providers
//! (each with an api key) and agents, run the mix for a warm-up (10 s or
//! 10 % of `--duration`, whichever is shorter; not measured), then run it
//! for `--duration` seconds with `--concurrency` workers. Each worker draws
//! a call from the weighted [`MIX`] on every turn, against a random seeded
//! agent or provider, and checks the response (a failed check counts as an
//! unexpected error).
//!
//! The only expected error is ABORTED on an UpdateAgent that sent an etag
//! another writer had already made stale; it is counted on its own. Every
//! other failure is an unexpected error: printed with its message as it
//! happens, counted, and the command exits 1.
//!
//! Reported (table on stdout, JSON with `--out`): per call count, ops/s,
//! p50/p99/max; totals; VmRSS of registry-service and crypto-service at
//! the start of the measured run and at its end, with the maximum sampled
//! every second (and a series every 10 s in the JSON); server CPU µs per
//! call from /proc.

use std::collections::HashSet;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proto::v1 as pb;
use serde_json::{Value, json};
use tonic::{Code, Response, Status};

use crate::pair::{Api, Pair, Target, random_hex};
use crate::stats::{
    TreeCpu, cell, cells, cpu_seconds, percentile, round1, round3, table_row, vm_rss_kib,
};

/// Flags of `bench soak`.
#[derive(Debug, Clone, clap::Args)]
pub struct SoakArgs {
    #[command(flatten)]
    pub target: Target,
    /// Seconds of measured load (after seeding and the warm-up).
    #[arg(long, default_value_t = 300)]
    pub duration: u64,
    /// Workers, each with one call in flight.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Providers to seed (each with an api key).
    #[arg(long, default_value_t = 8)]
    pub providers: usize,
    /// Agents to seed (the targets of the mix; never deleted).
    #[arg(long, default_value_t = 64)]
    pub agents: usize,
    /// Warm-up seconds before the measurement (default: 10 s or 10 % of
    /// `--duration`, whichever is shorter).
    #[arg(long)]
    pub warmup: Option<u64>,
    /// Also write the JSON summary here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// The calls of the mix. CreateAgent is always followed by DeleteAgent of
/// the agent it made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    GetAgent,
    ResolveAgent,
    UpdateAgent,
    UpdateAgentEtag,
    ListAgents,
    ListAgentVersions,
    DiffAgentVersions,
    RollbackAgent,
    CreateAgent,
    DeleteAgent,
    UpdateProvider,
}

/// Every call, in report order (index = `Op as usize`).
const OPS: [Op; 11] = [
    Op::GetAgent,
    Op::ResolveAgent,
    Op::UpdateAgent,
    Op::UpdateAgentEtag,
    Op::ListAgents,
    Op::ListAgentVersions,
    Op::DiffAgentVersions,
    Op::RollbackAgent,
    Op::CreateAgent,
    Op::DeleteAgent,
    Op::UpdateProvider,
];

/// What a worker does on a turn, and how often (relative weights): reads
/// dominate, as for a registry that runtimes resolve from; about a third
/// of the turns write. ListAgents walks every page (one call per page);
/// CreateAgent includes the DeleteAgent.
const MIX: [(Op, u32); 10] = [
    (Op::GetAgent, 20),
    (Op::ResolveAgent, 15),
    (Op::UpdateAgent, 12),
    (Op::UpdateAgentEtag, 8),
    (Op::ListAgents, 5),
    (Op::ListAgentVersions, 10),
    (Op::DiffAgentVersions, 10),
    (Op::RollbackAgent, 6),
    (Op::CreateAgent, 6),
    (Op::UpdateProvider, 5),
];

/// Page size of the ListAgents walk.
const AGENT_PAGE: i32 = 25;
/// Page size of ListAgentVersions.
const VERSION_PAGE: i32 = 10;
/// Unexpected errors printed as they happen; the rest are only counted.
const PRINTED_ERRORS: usize = 50;
/// Error messages kept for the JSON.
const KEPT_SAMPLES: usize = 20;

impl Op {
    fn name(self) -> &'static str {
        match self {
            Self::GetAgent => "GetAgent",
            Self::ResolveAgent => "ResolveAgent",
            Self::UpdateAgent => "UpdateAgent",
            Self::UpdateAgentEtag => "UpdateAgent+etag",
            Self::ListAgents => "ListAgents (page)",
            Self::ListAgentVersions => "ListAgentVersions",
            Self::DiffAgentVersions => "DiffAgentVersions",
            Self::RollbackAgent => "RollbackAgent",
            Self::CreateAgent => "CreateAgent",
            Self::DeleteAgent => "DeleteAgent",
            Self::UpdateProvider => "UpdateProvider (new key)",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Runs the soak and prints the report; exits 1 on any unexpected error.
pub async fn run(args: SoakArgs) {
    assert!(
        args.providers >= 1 && args.agents >= 1 && args.concurrency >= 1,
        "need at least one provider, one agent and one worker"
    );
    let warmup = Duration::from_secs(args.warmup.unwrap_or((args.duration / 10).min(10)));
    let duration = Duration::from_secs(args.duration);

    let pair = Pair::start(&args.target).await;
    let fleet = Arc::new(Fleet::seed(pair.api.clone(), args.providers, args.agents).await);
    let seeded_rss = Rss::read(&pair);

    let warm = run_workers(&fleet, args.concurrency, warmup).await;
    let start_rss = Rss::read(&pair);
    let load_at_start = loadavg();
    let sampler = RssSampler::start(&pair);
    let cpu_before = Cpu::read(&pair);
    let began = Instant::now();
    let measured = run_workers(&fleet, args.concurrency, duration).await;
    let wall = began.elapsed();
    let cpu = Cpu::read(&pair).since(&cpu_before);
    let end_rss = Rss::read(&pair);
    let samples = sampler.stop().await;
    let load_at_end = loadavg();
    let complaints = pair.complaints();
    let postgres = pair.postgres_pid.is_some();
    pair.stop().await;

    let summary = summarize(&Run {
        args: &args,
        warmup,
        wall,
        warm: &warm,
        measured: &measured,
        cpu,
        postgres,
        rss: [seeded_rss, start_rss, end_rss],
        samples: &samples,
        load: [load_at_start, load_at_end],
        complaints: &complaints,
        fleet: &fleet,
    });
    print_report(&summary);
    if let Some(path) = &args.out {
        let text = serde_json::to_string_pretty(&summary).expect("JSON summary");
        std::fs::write(path, text + "\n").expect("write --out");
    }
    let unexpected = measured.errors() + warm.errors();
    if unexpected > 0 {
        eprintln!("soak: {unexpected} unexpected error(s)");
        std::process::exit(1);
    }
}

/// The seeded providers and agents, and the newest version (with its
/// etag) any response has shown for each agent.
#[derive(Debug)]
struct Fleet {
    api: Api,
    /// Makes names and keys unique per run.
    tag: String,
    providers: Vec<String>,
    agents: Vec<SeededAgent>,
    /// Unexpected errors printed so far.
    printed: AtomicUsize,
    /// Makes every goal and temporary name unique, so that no update is a
    /// no-op (which would write no version).
    sequence: AtomicU64,
}

#[derive(Debug)]
struct SeededAgent {
    id: String,
    /// Index into `Fleet::providers`.
    provider: usize,
    /// (version, etag) of the newest version seen in a response.
    seen: Mutex<(i64, String)>,
}

impl Fleet {
    /// Creates `providers` providers with keys, then `agents` agents on
    /// them round-robin (sequentially: seeding is not measured).
    async fn seed(api: Api, providers: usize, agents: usize) -> Self {
        let tag = random_hex(4);
        let mut provider_ids = Vec::with_capacity(providers);
        for p in 0..providers {
            let provider = api
                .create_provider(pb::CreateProviderRequest {
                    provider: Some(pb::Provider {
                        name: format!("soak-{tag}-provider-{p}"),
                        provider_type: pb::ProviderType::Openai.into(),
                        model_name: "gpt-4o".to_owned(),
                        api_key: provider_key(&tag, p),
                        ..Default::default()
                    }),
                    change_description: String::new(),
                    ..Default::default()
                })
                .await
                .expect("seed CreateProvider")
                .into_inner();
            provider_ids.push(provider.id);
        }
        let mut seeded = Vec::with_capacity(agents);
        for a in 0..agents {
            let provider = a % providers;
            let agent = api
                .create_agent(new_agent(
                    format!("soak-{tag}-agent-{a}"),
                    &provider_ids[provider],
                ))
                .await
                .expect("seed CreateAgent")
                .into_inner();
            seeded.push(SeededAgent {
                id: agent.id,
                provider,
                seen: Mutex::new((agent.version, agent.etag)),
            });
        }
        Self {
            api,
            tag,
            providers: provider_ids,
            agents: seeded,
            printed: AtomicUsize::new(0),
            sequence: AtomicU64::new(0),
        }
    }

    /// A number no other call of this run got.
    fn unique(&self) -> u64 {
        self.sequence.fetch_add(1, Ordering::Relaxed)
    }

    /// The newest (version, etag) seen for agent `a`.
    fn seen(&self, a: usize) -> (i64, String) {
        self.agents[a]
            .seen
            .lock()
            .map(|seen| seen.clone())
            .unwrap_or_default()
    }

    /// Remembers `agent`'s version if it is the newest seen.
    fn saw(&self, a: usize, agent: &pb::Agent) {
        if let Ok(mut seen) = self.agents[a].seen.lock()
            && agent.version > seen.0
        {
            *seen = (agent.version, agent.etag.clone());
        }
    }

    /// Sum of the newest versions seen (versions written to seeded agents,
    /// give or take the last few).
    fn versions_seen(&self) -> i64 {
        (0..self.agents.len()).map(|a| self.seen(a).0).sum()
    }
}

/// The api key of provider `p`: a fixed prefix that ResolveAgent's
/// plaintext must carry, and a random tail that changes on every update.
fn provider_key(tag: &str, p: usize) -> String {
    format!("{}{}", key_prefix(tag, p), random_hex(12))
}

fn key_prefix(tag: &str, p: usize) -> String {
    format!("sk-soak-{tag}-p{p}-")
}

fn new_agent(name: String, provider_id: &str) -> pb::CreateAgentRequest {
    pb::CreateAgentRequest {
        agent: Some(pb::Agent {
            name,
            role: "Soak tester".to_owned(),
            goal: "Keep the registry busy".to_owned(),
            backstory: "Runs for minutes at a time.".to_owned(),
            llm_provider_id: Some(provider_id.to_owned()),
            temperature: Some(0.5),
            max_iter: Some(10),
            ..Default::default()
        }),
        change_description: String::new(),
        ..Default::default()
    }
}

/// Latencies and error counts of one worker (then of all).
#[derive(Debug, Clone)]
struct Tally {
    latencies: Vec<Vec<Duration>>,
    aborted: Vec<u64>,
    errors: Vec<u64>,
    samples: Vec<String>,
}

impl Default for Tally {
    fn default() -> Self {
        Self {
            latencies: vec![Vec::new(); OPS.len()],
            aborted: vec![0; OPS.len()],
            errors: vec![0; OPS.len()],
            samples: Vec::new(),
        }
    }
}

impl Tally {
    fn merge(&mut self, other: Self) {
        for (i, latencies) in other.latencies.into_iter().enumerate() {
            self.latencies[i].extend(latencies);
            self.aborted[i] += other.aborted[i];
            self.errors[i] += other.errors[i];
        }
        for sample in other.samples {
            if self.samples.len() < KEPT_SAMPLES {
                self.samples.push(sample);
            }
        }
    }

    fn calls(&self) -> usize {
        self.latencies.iter().map(Vec::len).sum()
    }

    fn errors(&self) -> u64 {
        self.errors.iter().sum()
    }

    fn aborted(&self) -> u64 {
        self.aborted.iter().sum()
    }
}

/// One worker's view: the fleet, its tally and its random numbers.
#[derive(Debug)]
struct Worker {
    fleet: Arc<Fleet>,
    tally: Tally,
    rng: SplitMix,
}

/// Runs `concurrency` workers until `length` has passed; their tallies,
/// merged.
async fn run_workers(fleet: &Arc<Fleet>, concurrency: usize, length: Duration) -> Tally {
    let until = Instant::now() + length;
    let mut handles = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let mut worker = Worker {
            fleet: Arc::clone(fleet),
            tally: Tally::default(),
            rng: SplitMix::seeded(),
        };
        handles.push(tokio::spawn(async move {
            while Instant::now() < until {
                worker.turn().await;
            }
            worker.tally
        }));
    }
    let mut all = Tally::default();
    for handle in handles {
        all.merge(handle.await.expect("a soak worker panicked"));
    }
    all
}

impl Worker {
    /// One turn: a call drawn from the mix.
    async fn turn(&mut self) {
        let total: u32 = MIX.iter().map(|(_, w)| w).sum();
        let mut pick = self.rng.below(u64::from(total));
        let mut op = MIX[0].0;
        for (candidate, weight) in MIX {
            if pick < u64::from(weight) {
                op = candidate;
                break;
            }
            pick -= u64::from(weight);
        }
        let a = self.rng.below(self.fleet.agents.len() as u64) as usize;
        match op {
            Op::GetAgent => self.get_agent(a).await,
            Op::ResolveAgent => self.resolve_agent(a).await,
            Op::UpdateAgent => self.update_agent(a, false).await,
            Op::UpdateAgentEtag => self.update_agent(a, true).await,
            Op::ListAgents => self.list_agents().await,
            Op::ListAgentVersions => self.list_agent_versions(a).await,
            Op::DiffAgentVersions => self.diff_agent_versions(a).await,
            Op::RollbackAgent => self.rollback_agent(a).await,
            Op::CreateAgent | Op::DeleteAgent => self.create_and_delete().await,
            Op::UpdateProvider => {
                let p = self.rng.below(self.fleet.providers.len() as u64) as usize;
                self.update_provider(p).await;
            }
        }
    }

    /// Times `call`, checks its response, and records the outcome; the
    /// checked value when it succeeded.
    async fn call<R, T>(
        &mut self,
        op: Op,
        call: impl Future<Output = Result<Response<R>, Status>>,
        check: impl FnOnce(R) -> Result<T, String>,
    ) -> Option<T> {
        let began = Instant::now();
        let result = call.await;
        self.tally.latencies[op.index()].push(began.elapsed());
        let why = match result {
            Ok(response) => match check(response.into_inner()) {
                Ok(value) => return Some(value),
                Err(why) => format!("bad response: {why}"),
            },
            Err(status) if status.code() == Code::Aborted && op == Op::UpdateAgentEtag => {
                self.tally.aborted[op.index()] += 1;
                return None;
            }
            Err(status) => format!("{:?}: {}", status.code(), status.message()),
        };
        self.fail(op, &why);
        None
    }

    /// Counts an unexpected error of `op`, keeps a sample and prints it.
    fn fail(&mut self, op: Op, why: &str) {
        self.tally.errors[op.index()] += 1;
        let line = format!("{}: {why}", op.name());
        if self.tally.samples.len() < KEPT_SAMPLES {
            self.tally.samples.push(line.clone());
        }
        if self.fleet.printed.fetch_add(1, Ordering::Relaxed) < PRINTED_ERRORS {
            eprintln!("unexpected error: {line}");
        }
    }

    async fn get_agent(&mut self, a: usize) {
        let fleet = Arc::clone(&self.fleet);
        let agent = &fleet.agents[a];
        let (known, _) = fleet.seen(a);
        let request = pb::GetAgentRequest {
            id: agent.id.clone(),
            show_deleted: false,
        };
        let got = self
            .call(Op::GetAgent, fleet.api.get_agent(request), |got| {
                // A response already seen was committed before this call.
                if got.id != agent.id || got.version < known {
                    return Err(format!(
                        "agent {} v{} (v{known} already seen)",
                        got.id, got.version
                    ));
                }
                Ok(got)
            })
            .await;
        if let Some(got) = got {
            fleet.saw(a, &got);
        }
    }

    async fn resolve_agent(&mut self, a: usize) {
        let fleet = Arc::clone(&self.fleet);
        let agent = &fleet.agents[a];
        let (known, _) = fleet.seen(a);
        let prefix = key_prefix(&fleet.tag, agent.provider);
        let provider_id = &fleet.providers[agent.provider];
        let request = pb::ResolveAgentRequest {
            agent_id: agent.id.clone(),
            version_number: None,
            // A full resolution each time: the peer has no cheap re-resolve.
            if_none_match: String::new(),
            label: String::new(),
        };
        self.call(Op::ResolveAgent, fleet.api.resolve_agent(request), |r| {
            let provider_ok = r
                .provider
                .as_ref()
                .is_some_and(|p| &p.id == provider_id && p.api_key.is_empty());
            if !provider_ok || !r.api_key.starts_with(&prefix) {
                return Err("wrong provider or plaintext".to_owned());
            }
            if r.agent_version < known {
                return Err(format!("v{} (v{known} already seen)", r.agent_version));
            }
            Ok(())
        })
        .await;
    }

    /// Changes the goal and temperature; with `etag`, sends the etag of the
    /// newest version seen, which another writer may have made stale.
    async fn update_agent(&mut self, a: usize, etag: bool) {
        let fleet = Arc::clone(&self.fleet);
        let (known, known_etag) = fleet.seen(a);
        let goal = format!("soak goal {}", fleet.unique());
        let temperature = self.rng.below(201) as f64 / 100.0;
        let op = if etag {
            Op::UpdateAgentEtag
        } else {
            Op::UpdateAgent
        };
        let request = pb::UpdateAgentRequest {
            agent: Some(pb::Agent {
                id: fleet.agents[a].id.clone(),
                goal: goal.clone(),
                temperature: Some(temperature),
                etag: if etag { known_etag } else { String::new() },
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["goal".into(), "temperature".into()],
            }),
            change_description: String::new(),
            ..Default::default()
        };
        let updated = self
            .call(op, fleet.api.update_agent(request), |got| {
                let applied = got.goal == goal && got.temperature == Some(temperature);
                // With the etag of v`known` it can only become v`known`+1.
                let version_ok = if etag {
                    got.version == known + 1
                } else {
                    got.version > known
                };
                if applied && version_ok {
                    Ok(got)
                } else {
                    Err(format!(
                        "v{} after v{known}, applied: {applied}",
                        got.version
                    ))
                }
            })
            .await;
        if let Some(updated) = updated {
            fleet.saw(a, &updated);
        }
    }

    /// Walks every page of ListAgents; every seeded agent must appear.
    async fn list_agents(&mut self) {
        let fleet = Arc::clone(&self.fleet);
        let mut ids = HashSet::new();
        let mut token = String::new();
        loop {
            let request = pb::ListAgentsRequest {
                page_size: AGENT_PAGE,
                page_token: token.clone(),
                ..Default::default()
            };
            let page = self
                .call(Op::ListAgents, fleet.api.list_agents(request), |page| {
                    if page.agents.len() > AGENT_PAGE as usize {
                        return Err(format!("{} agents in a page", page.agents.len()));
                    }
                    Ok(page)
                })
                .await;
            let Some(page) = page else { return };
            ids.extend(page.agents.into_iter().map(|agent| agent.id));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        let missing = fleet
            .agents
            .iter()
            .filter(|agent| !ids.contains(&agent.id))
            .count();
        if missing > 0 {
            let why = format!("{missing} seeded agents missing from the pages");
            self.fail(Op::ListAgents, &why);
        }
    }

    async fn list_agent_versions(&mut self, a: usize) {
        let fleet = Arc::clone(&self.fleet);
        let (known, _) = fleet.seen(a);
        let request = pb::ListAgentVersionsRequest {
            agent_id: fleet.agents[a].id.clone(),
            page_size: VERSION_PAGE,
            page_token: String::new(),
        };
        self.call(
            Op::ListAgentVersions,
            fleet.api.list_agent_versions(request),
            |page| {
                let numbers: Vec<i64> = page.versions.iter().map(|v| v.version_number).collect();
                let newest_first = numbers.windows(2).all(|w| w[0] == w[1] + 1);
                let newest = numbers.first().copied().unwrap_or(0);
                if numbers.len() > VERSION_PAGE as usize || !newest_first || newest < known {
                    return Err(format!(
                        "versions {numbers:?} (v{known} already seen, total {})",
                        page.total_size
                    ));
                }
                Ok(())
            },
        )
        .await;
    }

    /// Two random versions up to the newest seen; equal ones diff empty.
    async fn diff_agent_versions(&mut self, a: usize) {
        let fleet = Arc::clone(&self.fleet);
        let (known, _) = fleet.seen(a);
        let from = 1 + self.rng.below(known.max(1) as u64) as i64;
        let to = 1 + self.rng.below(known.max(1) as u64) as i64;
        let request = pb::DiffAgentVersionsRequest {
            agent_id: fleet.agents[a].id.clone(),
            from_version: from,
            to_version: to,
        };
        self.call(
            Op::DiffAgentVersions,
            fleet.api.diff_agent_versions(request),
            |diff| {
                if from == to && !diff.changes.is_empty() {
                    return Err(format!("v{from} differs from itself"));
                }
                Ok(())
            },
        )
        .await;
    }

    /// Restores a random version up to the newest seen: always a new
    /// version.
    async fn rollback_agent(&mut self, a: usize) {
        let fleet = Arc::clone(&self.fleet);
        let (known, _) = fleet.seen(a);
        let target = 1 + self.rng.below(known.max(1) as u64) as i64;
        let request = pb::RollbackAgentRequest {
            agent_id: fleet.agents[a].id.clone(),
            version_number: target,
            etag: String::new(),
            change_description: String::new(),
            ..Default::default()
        };
        let rolled = self
            .call(
                Op::RollbackAgent,
                fleet.api.rollback_agent(request),
                |got| {
                    if got.version > known {
                        Ok(got)
                    } else {
                        Err(format!("rollback gave v{} after v{known}", got.version))
                    }
                },
            )
            .await;
        if let Some(rolled) = rolled {
            fleet.saw(a, &rolled);
        }
    }

    /// Creates a short-lived agent and deletes it with its etag (nobody
    /// else knows it, so the etag cannot be stale).
    async fn create_and_delete(&mut self) {
        let fleet = Arc::clone(&self.fleet);
        let p = self.rng.below(fleet.providers.len() as u64) as usize;
        let name = format!("soak-{}-tmp-{}", fleet.tag, fleet.unique());
        let request = new_agent(name.clone(), &fleet.providers[p]);
        let created = self
            .call(Op::CreateAgent, fleet.api.create_agent(request), |got| {
                if got.name == name && got.version == 1 && !got.id.is_empty() {
                    Ok(got)
                } else {
                    Err(format!("created {:?} v{}", got.name, got.version))
                }
            })
            .await;
        let Some(created) = created else { return };
        let request = pb::DeleteAgentRequest {
            id: created.id,
            etag: created.etag,
            ..Default::default()
        };
        self.call(Op::DeleteAgent, fleet.api.delete_agent(request), Ok)
            .await;
    }

    /// Replaces provider `p`'s api key.
    async fn update_provider(&mut self, p: usize) {
        let fleet = Arc::clone(&self.fleet);
        let request = pb::UpdateProviderRequest {
            provider: Some(pb::Provider {
                id: fleet.providers[p].clone(),
                api_key: provider_key(&fleet.tag, p),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["api_key".into()],
            }),
            change_description: String::new(),
            revoke_replaced_key: false,
            ..Default::default()
        };
        self.call(
            Op::UpdateProvider,
            fleet.api.update_provider(request),
            |got| {
                if got.api_key.is_empty() && got.api_key_set && got.version > 1 {
                    Ok(())
                } else {
                    Err(format!(
                        "key shown: {}, set: {}, v{}",
                        !got.api_key.is_empty(),
                        got.api_key_set,
                        got.version
                    ))
                }
            },
        )
        .await;
    }
}

/// A small, fast generator for picking calls and targets (SplitMix64);
/// seeded from the OS.
#[derive(Debug)]
struct SplitMix(u64);

impl SplitMix {
    fn seeded() -> Self {
        let mut seed = [0u8; 8];
        getrandom::fill(&mut seed).expect("the OS random number generator");
        Self(u64::from_le_bytes(seed))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform enough in `0..n` for a load mix (`n` ≥ 1).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// VmRSS (KiB) of both services at one moment.
#[derive(Debug, Clone, Copy, Default)]
struct Rss {
    registry: u64,
    crypto: u64,
}

impl Rss {
    fn read(pair: &Pair) -> Self {
        Self {
            registry: vm_rss_kib(pair.registry_pid()),
            crypto: vm_rss_kib(pair.crypto_pid()),
        }
    }
}

/// Reads both services' RSS every second in the background.
#[derive(Debug)]
struct RssSampler {
    stop: tokio::sync::oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<Samples>,
}

/// What the sampler saw: the maxima and one reading every 10 s.
#[derive(Debug, Default)]
struct Samples {
    max: Rss,
    series: Vec<(u64, Rss)>,
}

impl RssSampler {
    fn start(pair: &Pair) -> Self {
        let (registry, crypto) = (pair.registry_pid(), pair.crypto_pid());
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let handle = tokio::spawn(async move {
            let mut samples = Samples::default();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut second = 0u64;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = &mut stopped => break,
                }
                let now = Rss {
                    registry: vm_rss_kib(registry),
                    crypto: vm_rss_kib(crypto),
                };
                samples.max.registry = samples.max.registry.max(now.registry);
                samples.max.crypto = samples.max.crypto.max(now.crypto);
                if second.is_multiple_of(10) {
                    samples.series.push((second, now));
                }
                second += 1;
            }
            samples
        });
        Self { stop, handle }
    }

    async fn stop(self) -> Samples {
        let _ = self.stop.send(());
        self.handle.await.expect("the RSS sampler panicked")
    }
}

/// CPU counters of the services, PostgreSQL's tree and this process.
#[derive(Debug, Clone)]
struct Cpu {
    registry: TreeCpu,
    crypto: TreeCpu,
    database: TreeCpu,
    client: f64,
}

/// CPU seconds used between two readings.
#[derive(Debug, Clone, Copy)]
struct CpuSpent {
    registry: f64,
    crypto: f64,
    database: f64,
    client: f64,
}

impl Cpu {
    fn read(pair: &Pair) -> Self {
        let postgres: Vec<u32> = pair.postgres_pid.into_iter().collect();
        Self {
            registry: TreeCpu::read(&[pair.registry_pid()]),
            crypto: TreeCpu::read(&[pair.crypto_pid()]),
            database: TreeCpu::read(&postgres),
            client: cpu_seconds(std::process::id()),
        }
    }

    fn since(&self, earlier: &Self) -> CpuSpent {
        CpuSpent {
            registry: self.registry.since(&earlier.registry).runtime,
            crypto: self.crypto.since(&earlier.crypto).runtime,
            // Ticks: they include backends that exited during the run.
            database: self.database.since(&earlier.database).ticks_total(),
            client: self.client - earlier.client,
        }
    }
}

/// /proc/loadavg's first three fields (the other processes on the machine
/// compete for its cores).
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// Everything the summary is made from.
#[derive(Debug)]
struct Run<'a> {
    args: &'a SoakArgs,
    warmup: Duration,
    wall: Duration,
    warm: &'a Tally,
    measured: &'a Tally,
    cpu: CpuSpent,
    postgres: bool,
    /// After seeding, at the start of the measurement, at its end.
    rss: [Rss; 3],
    samples: &'a Samples,
    load: [String; 2],
    complaints: &'a [String],
    fleet: &'a Fleet,
}

fn summarize(run: &Run<'_>) -> Value {
    let seconds = run.wall.as_secs_f64();
    let calls = run.measured.calls();
    let per_call = |cpu: f64| round1(cpu * 1e6 / calls.max(1) as f64);
    let ms = |d: Duration| round3(d.as_secs_f64() * 1e3);
    let mut ops = serde_json::Map::new();
    for op in OPS {
        let mut latencies = run.measured.latencies[op.index()].clone();
        latencies.sort_unstable();
        ops.insert(
            op.name().to_owned(),
            json!({
                "count": latencies.len(),
                "aborted": run.measured.aborted[op.index()],
                "errors": run.measured.errors[op.index()],
                "ops_per_s": round1(latencies.len() as f64 / seconds),
                "p50_ms": ms(percentile(&latencies, 0.50)),
                "p99_ms": ms(percentile(&latencies, 0.99)),
                "max_ms": ms(latencies.last().copied().unwrap_or_default()),
            }),
        );
    }
    let [seeded, start, end] = run.rss;
    let rss = |pick: fn(&Rss) -> u64| {
        json!({
            "after_seed": pick(&seeded),
            "start": pick(&start),
            "end": pick(&end),
            "max": pick(&run.samples.max).max(pick(&start)).max(pick(&end)),
            "end_minus_start": i128::from(pick(&end)) - i128::from(pick(&start)),
        })
    };
    let mut all: Vec<Duration> = run.measured.latencies.iter().flatten().copied().collect();
    all.sort_unstable();
    let args = run.args;
    json!({
        "tool": "bench soak",
        "config": {
            "db": args.target.db.name(),
            "duration_s": args.duration,
            "warmup_s": run.warmup.as_secs(),
            "concurrency": args.concurrency,
            "connections": args.target.connections,
            "providers": args.providers,
            "agents": args.agents,
            "mix": MIX.iter().map(|(op, w)| (op.name().to_owned(), json!(w))).collect::<serde_json::Map<_, _>>(),
        },
        "machine": {
            "cores": std::thread::available_parallelism().map(usize::from).unwrap_or(0),
            "loadavg_start": run.load[0],
            "loadavg_end": run.load[1],
        },
        "ops": ops,
        "total": {
            "calls": calls,
            "aborted": run.measured.aborted(),
            "errors": run.measured.errors(),
            "wall_s": round3(seconds),
            "ops_per_s": round1(calls as f64 / seconds),
            "p50_ms": ms(percentile(&all, 0.50)),
            "p99_ms": ms(percentile(&all, 0.99)),
            "max_ms": ms(all.last().copied().unwrap_or_default()),
            "registry_cpu_us_per_op": per_call(run.cpu.registry),
            "crypto_cpu_us_per_op": per_call(run.cpu.crypto),
            "server_cpu_us_per_op": per_call(run.cpu.registry + run.cpu.crypto),
            "db_cpu_us_per_op": run.postgres.then(|| per_call(run.cpu.database)),
            "client_cpu_us_per_op": per_call(run.cpu.client),
            "seeded_agent_versions": run.fleet.versions_seen(),
        },
        "warmup": {
            "calls": run.warm.calls(),
            "aborted": run.warm.aborted(),
            "errors": run.warm.errors(),
        },
        "rss_kib": {
            "registry": rss(|r| r.registry),
            "crypto": rss(|r| r.crypto),
        },
        "rss_series_kib": run.samples.series.iter().map(|(second, r)| json!({
            "t_s": second,
            "registry": r.registry,
            "crypto": r.crypto,
        })).collect::<Vec<_>>(),
        "unexpected_errors": run.measured.errors() + run.warm.errors(),
        "error_samples": run.warm.samples.iter().chain(&run.measured.samples).collect::<Vec<_>>(),
        "service_complaints": run.complaints.len(),
        "service_complaint_samples": run.complaints.iter().take(10).collect::<Vec<_>>(),
    })
}

/// The per-call figures of the report table, in column order.
const OP_COLUMNS: [&str; 7] = [
    "count",
    "aborted",
    "errors",
    "ops_per_s",
    "p50_ms",
    "p99_ms",
    "max_ms",
];

fn print_report(summary: &Value) {
    let c = &summary["config"];
    println!(
        "\nbench soak — {}, {} s measured after a {} s warm-up, concurrency {}, {} connection(s), {} agents, {} providers",
        cell(&c["db"]),
        cell(&c["duration_s"]),
        cell(&c["warmup_s"]),
        cell(&c["concurrency"]),
        cell(&c["connections"]),
        cell(&c["agents"]),
        cell(&c["providers"]),
    );
    println!(
        "| call | count | ABORTED (stale etag) | unexpected errors | ops/s | p50 ms | p99 ms | max ms |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for op in OPS {
        let figures = cells(&summary["ops"][op.name()], &OP_COLUMNS);
        println!(
            "{}",
            table_row(std::iter::once(op.name().to_owned()).chain(figures))
        );
    }
    let t = &summary["total"];
    // The total counts calls where a call counts them as `count`.
    let mut total = OP_COLUMNS;
    total[0] = "calls";
    println!(
        "{}",
        table_row(std::iter::once("**all**".to_owned()).chain(cells(t, &total)))
    );
    println!(
        "server CPU µs/call: registry {}, crypto {}, both {}; PostgreSQL {}; client {}",
        cell(&t["registry_cpu_us_per_op"]),
        cell(&t["crypto_cpu_us_per_op"]),
        cell(&t["server_cpu_us_per_op"]),
        cell(&t["db_cpu_us_per_op"]),
        cell(&t["client_cpu_us_per_op"]),
    );
    println!("| VmRSS KiB | after seeding | start | end | end − start | max (1 s samples) |");
    println!("|---|---|---|---|---|---|");
    for process in ["registry", "crypto"] {
        let r = &summary["rss_kib"][process];
        println!(
            "| {process} | {} | {} | {} | {} | {} |",
            cell(&r["after_seed"]),
            cell(&r["start"]),
            cell(&r["end"]),
            cell(&r["end_minus_start"]),
            cell(&r["max"]),
        );
    }
    let w = &summary["warmup"];
    let m = &summary["machine"];
    println!(
        "warm-up: {} calls, {} ABORTED, {} unexpected; load average {} at start, {} at end ({} cores)",
        cell(&w["calls"]),
        cell(&w["aborted"]),
        cell(&w["errors"]),
        cell(&m["loadavg_start"]),
        cell(&m["loadavg_end"]),
        cell(&m["cores"]),
    );
    println!(
        "services logged {} warnings/errors",
        cell(&summary["service_complaints"])
    );
    if let Some(lines) = summary["service_complaint_samples"].as_array() {
        for line in lines {
            println!("  {}", cell(line));
        }
    }
}
