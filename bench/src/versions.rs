//! `bench versions`: ListAgentVersions latency for agents with a short
//! and a very long history (by default 10 and 100,000 versions), to show
//! that it stays flat: the first page, a page in the middle of the history
//! and the oldest page, each reached the way a client would (page tokens),
//! each called one at a time.
//!
//! The long history is written either through gRPC (`--fill grpc`:
//! UpdateAgent calls, several in flight on the one agent) or directly in
//! the registry's database (`--fill sql`: two real updates, then copies of
//! the last version row with the following numbers, and `agents.version`
//! raised to match, in one transaction).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proto::v1 as pb;
use sea_orm::{ConnectionTrait, Database, Statement, TransactionTrait};
use serde_json::{Value, json};

use crate::pair::{Api, Pair, Target};
use crate::stats::{TreeCpu, percentile, round1, round3};

/// Flags of `bench versions`.
#[derive(Debug, Clone, clap::Args)]
pub struct VersionsArgs {
    #[command(flatten)]
    pub target: Target,
    /// History lengths to measure (one agent each).
    #[arg(long, value_delimiter = ',', default_value = "10,100000")]
    pub versions: Vec<i64>,
    /// How histories longer than 3 versions are written (gRPC writes about
    /// 240 versions/s on the reference machine: 100,000 would take ~7 min).
    #[arg(long, value_enum, default_value_t = Fill::Sql)]
    pub fill: Fill,
    /// UpdateAgent calls in flight while filling through gRPC.
    #[arg(long, default_value_t = 16)]
    pub fill_concurrency: usize,
    /// Measured calls per page (after 100 unmeasured ones).
    #[arg(long, default_value_t = 2000)]
    pub calls: usize,
    /// Versions per page.
    #[arg(long, default_value_t = 10)]
    pub page_size: i32,
    /// Also write the JSON summary here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// How a long history is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Fill {
    /// UpdateAgent over gRPC, one version per call.
    Grpc,
    /// Version rows inserted with SQL into the registry's database.
    Sql,
}

/// Runs the measurement and prints the table.
pub async fn run(args: VersionsArgs) {
    let pair = Pair::start(&args.target).await;
    let provider = create_provider(&pair.api).await;
    let mut fills = Vec::new();
    let mut rows = Vec::new();
    for &count in &args.versions {
        assert!(count >= 1, "--versions must be at least 1");
        let agent_id = create_agent(&pair.api, &provider, count).await;
        let began = Instant::now();
        let method = if count <= 3 || args.fill == Fill::Grpc {
            fill_grpc(&pair.api, &agent_id, count, args.fill_concurrency).await;
            "grpc"
        } else {
            fill_sql(&pair, &agent_id, count).await;
            "sql"
        };
        let seconds = began.elapsed().as_secs_f64();
        println!("{count} versions written ({method}) in {seconds:.1} s");
        fills.push(json!({"versions": count, "method": method, "seconds": round3(seconds)}));

        let middle = (count / 2).max(1);
        let mut pages = vec![("first", count), ("middle", middle)];
        if count > i64::from(args.page_size) {
            pages.push(("oldest", i64::from(args.page_size)));
        }
        for (page, starts_at) in pages {
            let token = token_for(&pair.api, &agent_id, count, starts_at).await;
            rows.push(measure_page(&pair, &args, &agent_id, count, page, starts_at, token).await);
        }
    }
    let complaints = pair.complaints();
    pair.stop().await;

    println!(
        "\nListAgentVersions, page_size {}, {} calls each, one at a time ({})",
        args.page_size,
        args.calls,
        args.target.db.name()
    );
    println!(
        "| versions | page | newest version on page | p50 ms | p99 ms | mean ms | registry CPU µs/call |"
    );
    println!("|---|---|---|---|---|---|---|");
    for row in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            row["versions"],
            row["page"].as_str().unwrap_or_default(),
            row["starts_at"],
            row["p50_ms"],
            row["p99_ms"],
            row["mean_ms"],
            row["registry_cpu_us_per_call"]
        );
    }
    for line in complaints.iter().take(10) {
        eprintln!("service log: {line}");
    }
    let summary = json!({
        "tool": "bench versions",
        "config": {
            "db": args.target.db.name(),
            "page_size": args.page_size,
            "calls": args.calls,
            "fill": fills,
        },
        "results": rows,
    });
    if let Some(path) = &args.out {
        let text = serde_json::to_string_pretty(&summary).expect("JSON summary");
        std::fs::write(path, text + "\n").expect("write --out");
    }
}

async fn create_provider(api: &Api) -> String {
    api.create_provider(pb::CreateProviderRequest {
        provider: Some(pb::Provider {
            name: "history-provider".to_owned(),
            provider_type: pb::ProviderType::Openai.into(),
            model_name: "gpt-4".to_owned(),
            api_key: "sk-history".to_owned(),
            ..Default::default()
        }),
        change_description: String::new(),
        ..Default::default()
    })
    .await
    .expect("CreateProvider")
    .into_inner()
    .id
}

async fn create_agent(api: &Api, provider: &str, count: i64) -> String {
    api.create_agent(pb::CreateAgentRequest {
        agent: Some(pb::Agent {
            name: format!("history-{count}"),
            role: "Senior Data Analyst".to_owned(),
            goal: "Analyze complex datasets and report actionable findings".to_owned(),
            backstory: "Expert in data science with a decade of experience.".to_owned(),
            llm_provider_id: Some(provider.to_owned()),
            temperature: Some(0.7),
            llm_overrides: Some(pb::ModelParameters {
                max_tokens: Some(2048),
                ..Default::default()
            }),
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

/// An UpdateAgent that always changes the goal (to revision `n`).
fn revision(agent_id: &str, n: i64) -> pb::UpdateAgentRequest {
    pb::UpdateAgentRequest {
        agent: Some(pb::Agent {
            id: agent_id.to_owned(),
            goal: format!("Analyze complex datasets (revision {n})"),
            max_iter: Some(i32::try_from(n % 1000).unwrap_or(0) + 1),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["goal".into(), "max_iter".into()],
        }),
        change_description: String::new(),
        ..Default::default()
    }
}

/// Takes the agent from version 1 to `count` with UpdateAgent calls,
/// `concurrency` in flight (they queue on the agent's row lock).
async fn fill_grpc(api: &Api, agent_id: &str, count: i64, concurrency: usize) {
    let queue = Arc::new(Mutex::new((2..=count).collect::<VecDeque<i64>>()));
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let queue = Arc::clone(&queue);
        let api = api.clone();
        let agent_id = agent_id.to_owned();
        workers.push(tokio::spawn(async move {
            loop {
                let next = queue.lock().ok().and_then(|mut q| q.pop_front());
                let Some(n) = next else { break };
                api.update_agent(revision(&agent_id, n))
                    .await
                    .expect("UpdateAgent while filling the history");
            }
        }));
    }
    for worker in workers {
        worker.await.expect("a fill worker panicked");
    }
}

/// Two real updates (versions 2 and 3), then copies of version 3's row as
/// versions 4..=count and `agents.version = count`, in one transaction.
/// The copies carry version 3's configuration and diff, which is what the
/// agent's current configuration is, so the history stays consistent.
async fn fill_sql(pair: &Pair, agent_id: &str, count: i64) {
    for n in 2..=3 {
        pair.api
            .update_agent(revision(agent_id, n))
            .await
            .expect("UpdateAgent");
    }
    let database = pair.database();
    let db = Database::connect(database.url())
        .await
        .expect("connect to the registry's database");
    let backend = db.get_database_backend();
    let numbers = if database.is_postgres() {
        "SELECT generate_series(4, $2::bigint) AS n"
    } else {
        "WITH RECURSIVE s(n) AS (SELECT 4 UNION ALL SELECT n + 1 FROM s WHERE n < $2) SELECT n FROM s"
    };
    let insert = format!(
        "INSERT INTO agent_versions (agent_id, tenant_id, version_number, action, configuration, \
         diff, change_description, changed_by, create_time) \
         SELECT v.agent_id, v.tenant_id, s.n, v.action, v.configuration, v.diff, \
         v.change_description, v.changed_by, v.create_time \
         FROM agent_versions v, ({numbers}) s WHERE v.agent_id = $1 AND v.version_number = 3"
    );
    let txn = db.begin().await.expect("begin");
    txn.execute_raw(Statement::from_sql_and_values(
        backend,
        &insert,
        [agent_id.into(), count.into()],
    ))
    .await
    .expect("insert version rows");
    txn.execute_raw(Statement::from_sql_and_values(
        backend,
        "UPDATE agents SET version = $2 WHERE id = $1",
        [agent_id.into(), count.into()],
    ))
    .await
    .expect("raise agents.version");
    txn.commit().await.expect("commit");
    let _ = db.close().await;
}

/// The page token whose page starts at version `starts_at` (newest first),
/// found by walking the history with page tokens; empty for the newest.
async fn token_for(api: &Api, agent_id: &str, count: i64, starts_at: i64) -> String {
    let mut token = String::new();
    let mut last = count + 1;
    while last - 1 > starts_at {
        let size = (last - 1 - starts_at).min(100);
        let page = api
            .list_agent_versions(pb::ListAgentVersionsRequest {
                agent_id: agent_id.to_owned(),
                page_size: i32::try_from(size).unwrap_or(100),
                page_token: token.clone(),
            })
            .await
            .expect("ListAgentVersions while walking the history")
            .into_inner();
        last = page
            .versions
            .last()
            .map(|v| v.version_number)
            .expect("a non-empty page while walking");
        token = page.next_page_token;
    }
    token
}

async fn measure_page(
    pair: &Pair,
    args: &VersionsArgs,
    agent_id: &str,
    count: i64,
    page: &str,
    starts_at: i64,
    token: String,
) -> Value {
    let request = || pb::ListAgentVersionsRequest {
        agent_id: agent_id.to_owned(),
        page_size: args.page_size,
        page_token: token.clone(),
    };
    let expected_len = usize::try_from(starts_at.min(i64::from(args.page_size))).unwrap_or(0);
    let check = |response: &pb::ListAgentVersionsResponse| {
        let newest = response.versions.first().map(|v| v.version_number);
        assert!(
            newest == Some(starts_at)
                && response.versions.len() == expected_len
                && i64::from(response.total_size) == count,
            "unexpected page: newest {newest:?}, {} versions, total {}",
            response.versions.len(),
            response.total_size
        );
    };
    for _ in 0..100 {
        let response = pair.api.list_agent_versions(request()).await;
        check(response.expect("ListAgentVersions").get_ref());
    }
    let postgres: Vec<u32> = pair.postgres_pid.into_iter().collect();
    let registry_before = TreeCpu::read(&[pair.registry_pid()]);
    let db_before = TreeCpu::read(&postgres);
    let mut latencies = Vec::with_capacity(args.calls);
    for _ in 0..args.calls {
        let began = Instant::now();
        let response = pair.api.list_agent_versions(request()).await;
        latencies.push(began.elapsed());
        check(response.expect("ListAgentVersions").get_ref());
    }
    let registry = TreeCpu::read(&[pair.registry_pid()]).since(&registry_before);
    let db = TreeCpu::read(&postgres).since(&db_before);
    latencies.sort();
    let calls = latencies.len().max(1) as f64;
    let ms = |d: Duration| round3(d.as_secs_f64() * 1e3);
    let mean = latencies.iter().sum::<Duration>().as_secs_f64() / calls;
    json!({
        "versions": count,
        "page": page,
        "starts_at": starts_at,
        "calls": latencies.len(),
        "p50_ms": ms(percentile(&latencies, 0.50)),
        "p99_ms": ms(percentile(&latencies, 0.99)),
        "mean_ms": round3(mean * 1e3),
        "registry_cpu_us_per_call": round1(registry.runtime / calls * 1e6),
        "db_cpu_us_per_call": pair.postgres_pid.map(|_| round1(db.runtime / calls * 1e6)),
    })
}
