//! `bench filter`: ListAgents with filters and orders over 100,000 agents
//! of one tenant (issue 18: the first page in ≤ 10 ms p50 on SQLite).
//!
//! The agents are written through gRPC (CreateAgent, many in flight), as a
//! client would: every side table and index is kept by the registry's own
//! write path. Then each case's first page is asked for one call at a time
//! (`--calls` measured after 20 unmeasured), and its p50/p99 latency, the
//! registry's CPU per call and the `total_size` it reported are printed.
//!
//! On SQLite the registry checks its planner statistics every second
//! (`REGISTRY_SQLITE_STATISTICS_SECONDS`, 60 by default), and the cases
//! run once the statistics describe the seeded table: what a registry
//! that has been running a while plans with, not one a second after a
//! bulk load. The row count they were taken at is printed.
//!
//! The write cost of `agent_tools` (kept by triggers): CreateAgent and an
//! UpdateAgent that changes the tools, timed with the triggers in place,
//! then again after the bench drops them in its own database, alternating
//! rounds in one sitting.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use proto::v1 as pb;
use sea_orm::{ConnectionTrait, Database};
use serde_json::{Value, json};

use crate::pair::{Api, Options, Pair, Target};
use crate::stats::{TreeCpu, percentile, round1, round3};

/// Flags of `bench filter`.
#[derive(Debug, Clone, clap::Args)]
pub struct FilterArgs {
    #[command(flatten)]
    pub target: Target,
    /// Agents in the tenant.
    #[arg(long, default_value_t = 100_000)]
    pub agents: usize,
    /// CreateAgent calls in flight while seeding.
    #[arg(long, default_value_t = 64)]
    pub seed_concurrency: usize,
    /// Measured calls per case.
    #[arg(long, default_value_t = 300)]
    pub calls: usize,
    /// Agents per page.
    #[arg(long, default_value_t = 10)]
    pub page_size: i32,
    /// Writes per round of the write-cost comparison (0: skip it).
    #[arg(long, default_value_t = 500)]
    pub writes: usize,
    /// Also write the JSON summary here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// One agent in this many has the rare tool, and one in this many the
/// rare provider.
const RARE: usize = 10_000;

/// Runs the measurement and prints the tables.
pub async fn run(args: FilterArgs) {
    let options = Options {
        sqlite_statistics_seconds: Some(1),
        ..Options::default()
    };
    let pair = Pair::start_with(&args.target, options).await;
    let api = &pair.api;
    let providers: Vec<String> = {
        let mut ids = Vec::new();
        for name in ["p0", "p1", "p2", "p3", "rare"] {
            ids.push(create_provider(api, name).await);
        }
        ids
    };
    let began = Instant::now();
    seed(api, &providers, args.agents, args.seed_concurrency).await;
    let seconds = began.elapsed().as_secs_f64();
    println!(
        "{} agents written through CreateAgent ({} in flight) in {seconds:.1} s ({:.0}/s)",
        args.agents,
        args.seed_concurrency,
        args.agents as f64 / seconds
    );
    let updated = touch_some(api, args.agents).await;
    // SQLite: the rows of agents its statistics were taken at.
    let analyzed_at = match args.target.db {
        crate::pair::Db::Sqlite => {
            let rows = sqlite_statistics(&pair.database_url()).await;
            println!("SQLite planner statistics of agents taken at {rows} rows");
            Some(rows)
        }
        crate::pair::Db::Postgres => {
            postgres_statistics(&pair.database_url()).await;
            println!("PostgreSQL planner statistics taken (ANALYZE)");
            None
        }
    };

    // Paged on: a page the scan budget stopped may be empty.
    let (mut middle, mut token) = (None, String::new());
    while middle.is_none() {
        let page = api
            .list_agents(pb::ListAgentsRequest {
                page_size: 1,
                filter: format!("name = {:?}", name_of(args.agents / 2)),
                page_token: token,
                ..Default::default()
            })
            .await
            .expect("the middle agent")
            .into_inner();
        middle = page.agents.into_iter().next().and_then(|a| a.create_time);
        assert!(
            middle.is_some() || !page.next_page_token.is_empty(),
            "the middle agent is listed"
        );
        token = page.next_page_token;
    }
    let middle = middle.expect("the middle agent's create_time");
    // prost's Display of a Timestamp is RFC 3339 (UTC).
    let middle_time = middle.to_string();
    // p2's agents are even, so every one has "search"; p1's are odd, none.
    let (p1, p2, rare) = (&providers[1], &providers[2], &providers[4]);
    let cases: Vec<(&str, String, &str)> = vec![
        ("no filter, by id", String::new(), ""),
        ("name equal", format!("name = {:?}", name_of(54_321)), ""),
        (
            "name prefix (100)",
            r#"name = "agent-0123*""#.to_owned(),
            "",
        ),
        ("provider (25%)", format!("provider = {p1:?}"), ""),
        ("provider (rare)", format!("provider = {rare:?}"), ""),
        ("tool (50%)", r#"tool:"search""#.to_owned(), ""),
        ("tool (rare)", r#"tool:"rare-tool""#.to_owned(), ""),
        ("NOT tool (50%)", r#"NOT tool:"search""#.to_owned(), ""),
        ("label (1%)", r#"label:"production""#.to_owned(), ""),
        (
            "label AND tool (0.5%), by update_time desc",
            r#"label:"production" AND tool:"search""#.to_owned(),
            "update_time desc",
        ),
        ("order name desc", String::new(), "name desc"),
        ("order update_time desc", String::new(), "update_time desc"),
        ("order create_time desc", String::new(), "create_time desc"),
        (
            "create_time after middle, by create_time",
            format!("create_time > {middle_time}"),
            "create_time",
        ),
        (
            "tool (50%) by create_time desc",
            r#"tool:"search""#.to_owned(),
            "create_time desc",
        ),
        (
            "provider AND tool, by update_time desc",
            format!(r#"provider = {p2:?} AND tool:"search""#),
            "update_time desc",
        ),
        (
            "provider AND tool, none match, by update_time desc",
            format!(r#"provider = {p1:?} AND tool:"search""#),
            "update_time desc",
        ),
        (
            "name prefix OR rare tool",
            r#"name = "agent-0999*" OR tool:"rare-tool""#.to_owned(),
            "",
        ),
    ];
    let mut rows = Vec::new();
    for (label, filter, order_by) in &cases {
        rows.push(measure(&pair, &args, label, filter, order_by).await);
    }
    let writes = if args.writes > 0 {
        write_cost(&pair, &providers[0], args.writes).await
    } else {
        Vec::new()
    };
    let complaints = pair.complaints();
    pair.stop().await;

    println!(
        "\nListAgents first page, {} agents in one tenant ({} updated since, their label production on the new version), page_size {}, {} calls each, one at a time ({})",
        args.agents,
        updated,
        args.page_size,
        args.calls,
        args.target.db.name()
    );
    println!(
        "| case | filter | order_by | total_size | first page | p50 ms | p99 ms | registry CPU µs/call | short first page: calls / ms to the end |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for row in &rows {
        let windowed = &row["windowed_to_the_end"];
        let to_the_end = if windowed.is_null() {
            "–".to_owned()
        } else {
            format!("{} / {}", windowed["calls"], windowed["ms"])
        };
        println!(
            "| {} | `{}` | `{}` | {} | {} | {} | {} | {} | {} |",
            row["case"].as_str().unwrap_or_default(),
            row["filter"].as_str().unwrap_or_default(),
            row["order_by"].as_str().unwrap_or_default(),
            row["total_size"],
            row["first_page_items"],
            row["p50_ms"],
            row["p99_ms"],
            row["registry_cpu_us_per_call"],
            to_the_end,
        );
    }
    if !writes.is_empty() {
        println!("\nWrite cost of agent_tools (triggers), one call at a time, alternating rounds");
        println!("| write | triggers | calls | p50 ms | mean ms | registry CPU µs/call |");
        println!("|---|---|---|---|---|---|");
        for row in &writes {
            println!(
                "| {} | {} | {} | {} | {} | {} |",
                row["write"].as_str().unwrap_or_default(),
                row["triggers"].as_str().unwrap_or_default(),
                row["calls"],
                row["p50_ms"],
                row["mean_ms"],
                row["registry_cpu_us_per_call"],
            );
        }
    }
    for line in complaints.iter().take(10) {
        eprintln!("service log: {line}");
    }
    let summary = json!({
        "tool": "bench filter",
        "config": {
            "db": args.target.db.name(),
            "agents": args.agents,
            "page_size": args.page_size,
            "calls": args.calls,
            "seed_seconds": round3(seconds),
            "sqlite_statistics_rows": analyzed_at,
        },
        "results": rows,
        "writes": writes,
    });
    if let Some(path) = &args.out {
        let text = serde_json::to_string_pretty(&summary).expect("JSON summary");
        std::fs::write(path, text + "\n").expect("write --out");
    }
}

fn name_of(i: usize) -> String {
    format!("agent-{i:06}")
}

async fn create_provider(api: &Api, name: &str) -> String {
    api.create_provider(pb::CreateProviderRequest {
        provider: Some(pb::Provider {
            name: name.to_owned(),
            provider_type: pb::ProviderType::Openai.into(),
            model_name: "gpt-4o".to_owned(),
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

/// Agent `i`: tool "search" on even agents, "rare-tool" on one in
/// [`RARE`], two common tools on all; provider `p<i % 4>`, or the rare one
/// for one in [`RARE`].
fn agent(i: usize, providers: &[String]) -> pb::Agent {
    let mut tools = vec!["calculator".to_owned(), "file-reader".to_owned()];
    if i.is_multiple_of(2) {
        tools.push("search".to_owned());
    }
    if i % RARE == 7 {
        tools.push("rare-tool".to_owned());
    }
    let provider = if i % RARE == 3 {
        providers[4].clone()
    } else {
        providers[i % 4].clone()
    };
    pb::Agent {
        name: name_of(i),
        role: "Senior Data Analyst".to_owned(),
        goal: "Analyze complex datasets and report actionable findings".to_owned(),
        backstory: "Expert in data science with a decade of experience.".to_owned(),
        tools,
        llm_provider_id: Some(provider),
        temperature: Some(0.7),
        ..Default::default()
    }
}

/// Writes agents 0..count, `concurrency` CreateAgent calls in flight.
async fn seed(api: &Api, providers: &[String], count: usize, concurrency: usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let providers = Arc::new(providers.to_vec());
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (api, next, providers) = (api.clone(), Arc::clone(&next), Arc::clone(&providers));
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                api.create_agent(pb::CreateAgentRequest {
                    agent: Some(agent(i, &providers)),
                    change_description: String::new(),
                    ..Default::default()
                })
                .await
                .expect("CreateAgent while seeding");
            }
        }));
    }
    for worker in workers {
        worker.await.expect("a seeding worker panicked");
    }
}

/// Updates one agent in 100 (their update_time moves past every other's)
/// and points its label `production` at the new version.
async fn touch_some(api: &Api, count: usize) -> usize {
    let mut updated = 0;
    for i in (0..count).step_by(100) {
        // Paged on: a page the scan budget stopped may be empty.
        let (mut found, mut token) = (None, String::new());
        loop {
            let page = api
                .list_agents(pb::ListAgentsRequest {
                    page_size: 1,
                    filter: format!("name = {:?}", name_of(i)),
                    page_token: token,
                    ..Default::default()
                })
                .await
                .expect("find an agent")
                .into_inner();
            found = found.or(page.agents.into_iter().next());
            if found.is_some() || page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        let Some(agent) = found else {
            continue;
        };
        api.update_agent(goal_update(&agent.id, "Touched"))
            .await
            .expect("UpdateAgent");
        api.set_agent_label(pb::SetAgentLabelRequest {
            agent_id: agent.id.clone(),
            label: "production".to_owned(),
            version_number: 2,
            ..Default::default()
        })
        .await
        .expect("SetAgentLabel");
        updated += 1;
    }
    updated
}

fn goal_update(id: &str, goal: &str) -> pb::UpdateAgentRequest {
    pb::UpdateAgentRequest {
        agent: Some(pb::Agent {
            id: id.to_owned(),
            goal: goal.to_owned(),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["goal".into()],
        }),
        change_description: String::new(),
        ..Default::default()
    }
}

async fn measure(
    pair: &Pair,
    args: &FilterArgs,
    label: &str,
    filter: &str,
    order_by: &str,
) -> Value {
    let request = || pb::ListAgentsRequest {
        page_size: args.page_size,
        page_token: String::new(),
        filter: filter.to_owned(),
        order_by: order_by.to_owned(),
        show_deleted: false,
    };
    let mut first = pb::ListAgentsResponse::default();
    for _ in 0..20 {
        first = pair
            .api
            .list_agents(request())
            .await
            .unwrap_or_else(|e| panic!("{label}: {e:?}"))
            .into_inner();
    }
    let total_size = first.total_size;
    // A first page short of page_size with a next page stopped at the scan
    // budget (a window): page on to the end, timing the calls it takes.
    let short = first.agents.len() < usize::try_from(args.page_size).unwrap_or(0);
    let to_the_end = if short && !first.next_page_token.is_empty() {
        let started = Instant::now();
        let (mut calls, mut found, mut token) = (1usize, first.agents.len(), first.next_page_token);
        while !token.is_empty() {
            let page = pair
                .api
                .list_agents(pb::ListAgentsRequest {
                    page_token: token,
                    ..request()
                })
                .await
                .unwrap_or_else(|e| panic!("{label}, paging on: {e:?}"))
                .into_inner();
            calls += 1;
            found += page.agents.len();
            token = page.next_page_token;
        }
        json!({"calls": calls, "found": found, "ms": round3(started.elapsed().as_secs_f64() * 1e3)})
    } else {
        Value::Null
    };
    let roots = [pair.registry_pid()];
    let cpu_before = TreeCpu::read(&roots);
    let mut latencies = Vec::with_capacity(args.calls);
    for _ in 0..args.calls {
        let started = Instant::now();
        pair.api.list_agents(request()).await.expect("ListAgents");
        latencies.push(started.elapsed());
    }
    let cpu = TreeCpu::read(&roots).since(&cpu_before);
    latencies.sort_unstable();
    let ms = |d: Duration| round3(d.as_secs_f64() * 1e3);
    let row = json!({
        "case": label,
        "filter": filter,
        "order_by": order_by,
        "total_size": total_size,
        "first_page_items": first.agents.len(),
        "windowed_to_the_end": to_the_end,
        "p50_ms": ms(percentile(&latencies, 0.50)),
        "p99_ms": ms(percentile(&latencies, 0.99)),
        "registry_cpu_us_per_call": round1(cpu.runtime * 1e6 / args.calls as f64),
    });
    println!(
        "{label}: p50 {} ms, total_size {total_size}, first page {} agents, windowed to the end: {}",
        row["p50_ms"], row["first_page_items"], row["windowed_to_the_end"]
    );
    row
}

/// CreateAgent (three tools) and UpdateAgent (tools changed) with the
/// triggers, then without them (dropped in the bench's database), then
/// with them again (re-created), `writes` calls per round, one at a time.
async fn write_cost(pair: &Pair, provider: &str, writes: usize) -> Vec<Value> {
    let database = pair.database();
    let db = Database::connect(database.url())
        .await
        .expect("connect to the registry's database");
    let mut rows = Vec::new();
    let mut serial = 0usize;
    for round in ["with", "without", "with", "without"] {
        set_triggers(&db, database.is_postgres(), round == "with").await;
        let roots = [pair.registry_pid()];
        let mut ids = Vec::new();
        let cpu_before = TreeCpu::read(&roots);
        let mut latencies = Vec::new();
        for _ in 0..writes {
            serial += 1;
            let mut agent = agent(serial, &vec![provider.to_owned(); 5]);
            agent.name = format!("write-{serial:07}");
            let started = Instant::now();
            let created = pair
                .api
                .create_agent(pb::CreateAgentRequest {
                    agent: Some(agent),
                    change_description: String::new(),
                    ..Default::default()
                })
                .await
                .expect("CreateAgent");
            latencies.push(started.elapsed());
            ids.push(created.into_inner().id);
        }
        let cpu = TreeCpu::read(&roots).since(&cpu_before);
        rows.push(write_row(
            "CreateAgent (3 tools)",
            round,
            &mut latencies,
            cpu.runtime,
        ));

        let cpu_before = TreeCpu::read(&roots);
        let mut latencies = Vec::new();
        for id in &ids {
            let request = pb::UpdateAgentRequest {
                agent: Some(pb::Agent {
                    id: id.clone(),
                    tools: vec!["search".into(), "browser".into()],
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["tools".into()],
                }),
                change_description: String::new(),
                ..Default::default()
            };
            let started = Instant::now();
            pair.api.update_agent(request).await.expect("UpdateAgent");
            latencies.push(started.elapsed());
        }
        let cpu = TreeCpu::read(&roots).since(&cpu_before);
        rows.push(write_row(
            "UpdateAgent (tools changed)",
            round,
            &mut latencies,
            cpu.runtime,
        ));

        let cpu_before = TreeCpu::read(&roots);
        let mut latencies = Vec::new();
        for id in &ids {
            let started = Instant::now();
            pair.api
                .update_agent(goal_update(id, &format!("Goal {serial}")))
                .await
                .expect("UpdateAgent");
            latencies.push(started.elapsed());
        }
        let cpu = TreeCpu::read(&roots).since(&cpu_before);
        rows.push(write_row(
            "UpdateAgent (tools kept)",
            round,
            &mut latencies,
            cpu.runtime,
        ));
    }
    set_triggers(&db, database.is_postgres(), true).await;
    let _ = db.close().await;
    rows
}

fn write_row(write: &str, round: &str, latencies: &mut [Duration], cpu_seconds: f64) -> Value {
    latencies.sort_unstable();
    let calls = latencies.len().max(1);
    let mean = latencies.iter().sum::<Duration>().as_secs_f64() / calls as f64;
    let row = json!({
        "write": write,
        "triggers": round,
        "calls": latencies.len(),
        "p50_ms": round3(percentile(latencies, 0.50).as_secs_f64() * 1e3),
        "mean_ms": round3(mean * 1e3),
        "registry_cpu_us_per_call": round1(cpu_seconds * 1e6 / calls as f64),
    });
    println!("{write}, triggers {round}: p50 {} ms", row["p50_ms"]);
    row
}

/// Drops or re-creates the triggers that keep `agent_tools`, as the
/// migration `m20261208_000001_agent_tools_column` writes them.
async fn set_triggers(db: &sea_orm::DatabaseConnection, postgres: bool, on: bool) {
    let statements: Vec<&str> = match (postgres, on) {
        (true, on) => {
            let mut statements = vec![
                "DROP TRIGGER IF EXISTS tr_agents_tools ON agents",
                "DROP TRIGGER IF EXISTS tr_agents_tools_update ON agents",
            ];
            if on {
                statements.extend(migrations::AGENT_TOOLS_POSTGRES_TRIGGERS);
            }
            statements
        }
        (false, on) => {
            let mut statements = vec![
                "DROP TRIGGER IF EXISTS tr_agents_tools_insert",
                "DROP TRIGGER IF EXISTS tr_agents_tools_update",
            ];
            if on {
                statements.extend(migrations::AGENT_TOOLS_SQLITE_TRIGGERS);
            }
            statements
        }
    };
    for statement in statements {
        db.execute_unprepared(statement)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
}

/// Takes PostgreSQL's planner statistics of the bench's database, as
/// autovacuum would soon after the load on a server that runs it (the
/// default; some test servers, this project's bench machine among them,
/// run with it off, and without statistics the planner takes a tenant of
/// 100,000 agents for a few rows).
async fn postgres_statistics(url: &str) {
    let db = Database::connect(url)
        .await
        .expect("open the bench's PostgreSQL database");
    db.execute_unprepared("ANALYZE").await.expect("ANALYZE");
    let _ = db.close().await;
}

/// Waits (up to a minute) until the registry's SQLite planner statistics
/// describe `agents` with at least a thousand rows, and answers the row
/// count they were taken at (0 when they never came: the cases then run
/// without them, and the printed count says so).
async fn sqlite_statistics(url: &str) -> i64 {
    let db = Database::connect(url)
        .await
        .expect("open the bench's SQLite file");
    // `sqlite_stat1` appears with the first analysis; until then the query
    // fails and counts as none. Its `stat` starts with the table's rows.
    let query = "SELECT MAX(CAST(stat AS INTEGER)) FROM sqlite_stat1 WHERE tbl = 'agents'";
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = db
            .query_one_raw(sea_orm::Statement::from_string(
                db.get_database_backend(),
                query.to_owned(),
            ))
            .await
            .ok()
            .flatten()
            .and_then(|row| row.try_get_by_index::<Option<i64>>(0).ok().flatten())
            .unwrap_or(0);
        if rows >= 1000 || Instant::now() >= deadline {
            let _ = db.close().await;
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
