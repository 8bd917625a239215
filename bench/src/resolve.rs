//! `bench resolve`: ResolveAgent as a runtime calls it — a full resolution
//! (the key decrypted by crypto-service) against a re-resolution with the
//! etag of the last answer (`if_none_match`), which answers `not_modified`
//! without a key and without calling crypto-service. Both are measured in
//! alternating rounds at the same concurrency: throughput, latency, and the
//! CPU of both services per call.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::v1 as pb;
use serde_json::json;

use crate::pair::{Api, Pair, Target};
use crate::stats::{TreeCpu, percentile, round1, round3};

/// Flags of `bench resolve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ResolveArgs {
    #[command(flatten)]
    pub target: Target,
    /// ResolveAgent calls in flight.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Measured calls per round and mode (after 500 unmeasured ones).
    #[arg(long, default_value_t = 20_000)]
    pub calls: usize,
    /// Rounds; each measures both modes, full first in odd rounds.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Also write the JSON summary here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// How a call resolves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// No etag: the whole answer, with the key.
    Full,
    /// The etag of the last answer: `not_modified`.
    NotModified,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::NotModified => "not_modified",
        }
    }
}

/// Runs the rounds and prints the table.
pub async fn run(args: ResolveArgs) {
    let pair = Pair::start(&args.target).await;
    let agent_id = setup(&pair.api).await;
    let etag = pair
        .api
        .resolve_agent(request(&agent_id, ""))
        .await
        .expect("ResolveAgent")
        .into_inner()
        .etag;
    let roots = [pair.registry_pid(), pair.crypto_pid()];
    let mut rows = Vec::new();
    for round in 1..=args.rounds {
        let order = if round % 2 == 1 {
            [Mode::Full, Mode::NotModified]
        } else {
            [Mode::NotModified, Mode::Full]
        };
        for mode in order {
            let tag = match mode {
                Mode::Full => "",
                Mode::NotModified => etag.as_str(),
            };
            calls(&pair.api, &agent_id, tag, mode, 500, args.concurrency).await;
            let before = TreeCpu::read(&roots);
            let began = Instant::now();
            let mut latencies = calls(
                &pair.api,
                &agent_id,
                tag,
                mode,
                args.calls,
                args.concurrency,
            )
            .await;
            let seconds = began.elapsed().as_secs_f64();
            let cpu = TreeCpu::read(&roots).since(&before);
            latencies.sort_unstable();
            let per_call_us = cpu.runtime * 1e6 / args.calls as f64;
            rows.push(json!({
                "round": round,
                "mode": mode.name(),
                "calls": args.calls,
                "ops_per_second": round1(args.calls as f64 / seconds),
                "p50_ms": round3(percentile(&latencies, 0.50).as_secs_f64() * 1e3),
                "p99_ms": round3(percentile(&latencies, 0.99).as_secs_f64() * 1e3),
                "services_cpu_us_per_call": round1(per_call_us),
            }));
        }
    }
    let complaints = pair.complaints();
    pair.stop().await;

    println!(
        "\nResolveAgent, {} calls in flight, {} calls per round and mode ({}; CPUs: registry {}, crypto {}, client {})",
        args.concurrency,
        args.calls,
        args.target.db.name(),
        args.target.registry_cpus.as_deref().unwrap_or("any"),
        args.target.crypto_cpus.as_deref().unwrap_or("any"),
        args.target.client_cpus.as_deref().unwrap_or("any"),
    );
    println!("| round | mode | ops/s | p50 ms | p99 ms | registry + crypto CPU µs/call |");
    println!("|---|---|---|---|---|---|");
    for row in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            row["round"],
            row["mode"].as_str().unwrap_or_default(),
            row["ops_per_second"],
            row["p50_ms"],
            row["p99_ms"],
            row["services_cpu_us_per_call"]
        );
    }
    let median = |mode: Mode| {
        let mut ops: Vec<f64> = rows
            .iter()
            .filter(|row| row["mode"] == mode.name())
            .filter_map(|row| row["ops_per_second"].as_f64())
            .collect();
        ops.sort_by(f64::total_cmp);
        ops.get(ops.len() / 2).copied().unwrap_or(0.0)
    };
    let ratio = median(Mode::NotModified) / median(Mode::Full).max(f64::MIN_POSITIVE);
    println!("\nnot_modified / full throughput (median rounds): {ratio:.1}×");
    for line in complaints.iter().take(10) {
        eprintln!("service log: {line}");
    }
    let summary = json!({
        "tool": "bench resolve",
        "config": {
            "db": args.target.db.name(),
            "concurrency": args.concurrency,
            "calls": args.calls,
            "rounds": args.rounds,
            "registry_cpus": args.target.registry_cpus,
            "crypto_cpus": args.target.crypto_cpus,
            "client_cpus": args.target.client_cpus,
        },
        "results": rows,
        "not_modified_over_full": round1(ratio),
    });
    if let Some(path) = &args.out {
        let text = serde_json::to_string_pretty(&summary).expect("JSON summary");
        std::fs::write(path, text + "\n").expect("write --out");
    }
}

fn request(agent_id: &str, if_none_match: &str) -> pb::ResolveAgentRequest {
    pb::ResolveAgentRequest {
        agent_id: agent_id.to_owned(),
        version_number: None,
        if_none_match: if_none_match.to_owned(),
        label: String::new(),
    }
}

/// A provider with a key and an agent assigned to it; the agent's id.
async fn setup(api: &Api) -> String {
    let provider = api
        .create_provider(pb::CreateProviderRequest {
            provider: Some(pb::Provider {
                name: "resolve-provider".to_owned(),
                provider_type: pb::ProviderType::Openai.into(),
                model_name: "gpt-4".to_owned(),
                api_key: "sk-resolve-bench".to_owned(),
                ..Default::default()
            }),
            change_description: String::new(),
            ..Default::default()
        })
        .await
        .expect("CreateProvider")
        .into_inner();
    api.create_agent(pb::CreateAgentRequest {
        agent: Some(pb::Agent {
            name: "resolve-agent".to_owned(),
            role: "Senior Data Analyst".to_owned(),
            goal: "Analyze complex datasets and report actionable findings".to_owned(),
            llm_provider_id: Some(provider.id),
            ..Default::default()
        }),
        change_description: String::new(),
        ..Default::default()
    })
    .await
    .expect("CreateAgent")
    .into_inner()
    .id
}

/// `count` calls, `concurrency` in flight; each one's latency. Every answer
/// is checked to be the mode's (a key, or `not_modified` without one).
async fn calls(
    api: &Api,
    agent_id: &str,
    if_none_match: &str,
    mode: Mode,
    count: usize,
    concurrency: usize,
) -> Vec<Duration> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (api, next) = (api.clone(), Arc::clone(&next));
        let request = request(agent_id, if_none_match);
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < count {
                let started = Instant::now();
                let answer = api
                    .resolve_agent(request.clone())
                    .await
                    .expect("ResolveAgent")
                    .into_inner();
                latencies.push(started.elapsed());
                let as_expected = match mode {
                    Mode::Full => !answer.not_modified && !answer.api_key.is_empty(),
                    Mode::NotModified => answer.not_modified && answer.api_key.is_empty(),
                };
                assert!(as_expected, "a {} call answered otherwise", mode.name());
            }
            latencies
        }));
    }
    let mut all = Vec::with_capacity(count);
    for worker in workers {
        all.extend(worker.await.expect("a worker"));
    }
    all
}
