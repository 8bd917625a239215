//! `bench watch`: WatchChanges under load (issue 17). Many concurrent
//! streams of one tenant, each opened "from now" and caught up (SYNCED)
//! before the first write, while a writer updates a few agents on a fixed
//! schedule. For every (watcher, change) pair: the instant the watcher
//! received the change against the instant its write was sent
//! (change-to-event latency, which includes the write's own latency), and a
//! check that every watcher received every change once, in revision
//! order. Before the writes: the registry's memory with no watcher and
//! with every watcher open and idle, and its CPU while they idle.
//!
//! On PostgreSQL the watchers are on one registry replica (A) and the
//! writes go through a second one (B) over the same database, so every
//! change reaches A through the database's notification.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use proto::v1 as pb;
use serde_json::json;
use tokio::sync::{Semaphore, mpsc, watch};

use crate::pair::{Api, Db, Pair, Target};
use crate::stats::{TreeCpu, cpu_seconds, percentile, round1, round3, vm_rss_kib};

/// Concurrent streams the registry allows on one HTTP/2 connection by
/// default (`GRPC_MAX_CONCURRENT_STREAMS`).
const STREAMS_PER_CONNECTION: usize = 256;

/// How long after the last write's answer every change must have reached
/// every watcher; later, the missing ones are counted as problems.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(30);

/// How long the watchers keep listening once every change has arrived, so
/// that a duplicate sent after the last change is still seen.
const DUPLICATE_GRACE: Duration = Duration::from_millis(500);

/// Problems described in the output (all are counted).
const EXAMPLES: usize = 10;

/// Flags of `bench watch`.
#[derive(Debug, Clone, clap::Args)]
pub struct WatchArgs {
    /// The database, and the writer's connections (`--connections`).
    #[command(flatten)]
    pub target: Target,
    /// Concurrent WatchChanges streams, all of one tenant.
    #[arg(long, default_value_t = 1_000)]
    pub watchers: usize,
    /// HTTP/2 connections the streams are spread over, round-robin (the
    /// registry allows 256 concurrent streams per connection by default).
    #[arg(long, default_value_t = 8)]
    pub watch_connections: usize,
    /// Streams being opened at once (each holds its slot until SYNCED), so
    /// that the memory reading is not of a thundering herd's leftovers.
    #[arg(long, default_value_t = 64)]
    pub open_concurrency: usize,
    /// UpdateAgent calls sent per second, on schedule whatever the answers'
    /// latency (each in a task of its own).
    #[arg(long, default_value_t = 100)]
    pub writes_per_second: u32,
    /// Seconds of writes.
    #[arg(long, default_value_t = 20)]
    pub seconds: u32,
    /// Agents the writes go round (each write updates one agent's goal).
    #[arg(long, default_value_t = 4)]
    pub agents: usize,
    /// Seconds the registry idles before each memory reading; the idle CPU
    /// is measured over as long.
    #[arg(long, default_value_t = 5)]
    pub idle_seconds: u64,
    /// Also write the JSON summary here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// One write: which agent, when it was sent and answered, and the version
/// it produced (or why it failed).
#[derive(Debug)]
struct Write {
    agent: u32,
    sent: Instant,
    answered: Instant,
    version: Result<i64, String>,
}

/// A change as one watcher received it.
#[derive(Debug, Clone, Copy)]
struct Received {
    revision: i64,
    /// Index of the agent in the writer's list (`u32::MAX`: another
    /// resource).
    agent: u32,
    version: i64,
    at: Instant,
}

/// What one watcher saw after its SYNCED.
#[derive(Debug)]
struct Watched {
    /// The revision SYNCED carried.
    synced: i64,
    received: Vec<Received>,
    /// How the stream ended before the bench stopped it, if it did.
    ended: Option<String>,
}

/// The CPU counters read at the start of a phase.
struct CpuReading {
    at: Instant,
    registry: TreeCpu,
    replica: TreeCpu,
    database: TreeCpu,
    bench: f64,
}

/// CPU used in a phase, as a percentage of one core.
#[derive(Debug, Clone, Copy)]
struct CpuPercent {
    registry: f64,
    replica: f64,
    database: f64,
    bench: f64,
    seconds: f64,
}

/// The processes whose CPU a phase reads.
struct Processes {
    registry: u32,
    replica: Option<u32>,
    database: Option<u32>,
}

impl Processes {
    fn read(&self) -> CpuReading {
        let tree = |pid: Option<u32>| pid.map(|pid| TreeCpu::read(&[pid])).unwrap_or_default();
        CpuReading {
            at: Instant::now(),
            registry: TreeCpu::read(&[self.registry]),
            replica: tree(self.replica),
            database: tree(self.database),
            bench: cpu_seconds(std::process::id()),
        }
    }
}

impl CpuReading {
    /// CPU used since this reading (schedstat for the services, clock
    /// ticks for the bench itself, whose tree holds the services).
    fn since(&self, processes: &Processes) -> CpuPercent {
        let now = processes.read();
        let seconds = now.at.duration_since(self.at).as_secs_f64();
        let percent = |cpu: f64| round1(cpu * 100.0 / seconds.max(f64::MIN_POSITIVE));
        CpuPercent {
            registry: percent(now.registry.since(&self.registry).runtime),
            replica: percent(now.replica.since(&self.replica).runtime),
            database: percent(now.database.since(&self.database).runtime),
            bench: percent(now.bench - self.bench),
            seconds,
        }
    }
}

/// Runs the measurement, prints the tables, and exits non-zero when a
/// watcher missed, repeated or reordered a change, or a write failed.
pub async fn run(args: WatchArgs) {
    let capacity = args.watch_connections.max(1) * STREAMS_PER_CONNECTION;
    assert!(
        args.watchers <= capacity,
        "{} watchers need more than {} connections of {STREAMS_PER_CONNECTION} streams",
        args.watchers,
        args.watch_connections
    );
    assert!(args.agents > 0, "--agents must be at least 1");
    let load_at_start = load_average();
    let pair = Pair::start(&args.target).await;
    let replica = match args.target.db {
        Db::Postgres => Some(pair.start_replica().await),
        Db::Sqlite => None,
    };
    let writer = match &replica {
        Some(b) => {
            pair.api
                .connect_like(&b.url(), args.target.connections)
                .await
        }
        None => pair.api.clone(),
    };
    let processes = Processes {
        registry: pair.registry_pid(),
        replica: replica.as_ref().map(tests::Process::pid),
        database: pair.postgres_pid,
    };
    // For a profiler to attach to (stderr, so the tables stay clean).
    eprintln!(
        "registry-service pid {} (watchers){}",
        processes.registry,
        processes
            .replica
            .map(|pid| format!(", replica B pid {pid} (writes)"))
            .unwrap_or_default()
    );
    let agents = create_agents(&writer, args.agents).await;
    let idle = Duration::from_secs(args.idle_seconds);

    // The watchers' connections are open before the first reading, so
    // the difference is the streams' own memory.
    let watch_api = pair
        .api
        .connect_like(&pair.registry_url(), args.watch_connections)
        .await;
    let idle_cpu_before = processes.read();
    tokio::time::sleep(idle).await;
    let idle_cpu_without = idle_cpu_before.since(&processes);
    let rss_without = vm_rss_kib(processes.registry);

    let (stop, stopping) = watch::channel(false);
    let delivered = Arc::new(AtomicU64::new(0));
    let agent_index: Arc<HashMap<String, u32>> = Arc::new(
        agents
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), u32::try_from(i).expect("few agents")))
            .collect(),
    );
    let (ready, mut ready_rx) = mpsc::channel(args.watchers.max(1));
    let opening = Instant::now();
    let mut watchers = Vec::with_capacity(args.watchers);
    let opening_slots = Arc::new(Semaphore::new(args.open_concurrency.max(1)));
    let expected_writes = args.writes_per_second as usize * args.seconds as usize;
    for _ in 0..args.watchers {
        watchers.push(tokio::spawn(follow(
            watch_api.clone(),
            Arc::clone(&opening_slots),
            Arc::clone(&agent_index),
            ready.clone(),
            stopping.clone(),
            Arc::clone(&delivered),
            expected_writes,
        )));
    }
    drop(ready);
    let mut synced_at = Vec::with_capacity(args.watchers);
    while let Some(answer) = ready_rx.recv().await {
        match answer {
            Ok(revision) => synced_at.push(revision),
            Err(why) => panic!("a watcher did not open: {why}"),
        }
    }
    let open_seconds = opening.elapsed().as_secs_f64();
    assert_eq!(synced_at.len(), args.watchers, "every watcher synced");

    tokio::time::sleep(idle).await;
    let rss_with = vm_rss_kib(processes.registry);
    let idle_cpu_before = processes.read();
    tokio::time::sleep(idle).await;
    let idle_cpu_with = idle_cpu_before.since(&processes);

    let load_at_writes = load_average();
    eprintln!(
        "{} streams synced; writes start ({} s)",
        args.watchers, args.seconds
    );
    let busy = processes.read();
    let writes = write_on_schedule(&writer, &agents, args.writes_per_second, args.seconds).await;
    let written = writes.iter().filter(|w| w.version.is_ok()).count();
    let wanted = (written * args.watchers) as u64;
    let deadline = Instant::now() + DELIVERY_DEADLINE;
    while delivered.load(Ordering::Relaxed) < wanted && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let busy = busy.since(&processes);
    tokio::time::sleep(DUPLICATE_GRACE).await;
    stop.send_replace(true);
    let mut watched = Vec::with_capacity(args.watchers);
    for watcher in watchers {
        watched.push(watcher.await.expect("a watcher task"));
    }
    let complaints = pair.complaints();
    drop(watch_api);
    drop(writer);
    if let Some(replica) = replica {
        replica.terminate().await;
    }
    pair.stop().await;

    let check = Check::of(&writes, &watched);
    let summary = Summary {
        args: &args,
        load_at_start,
        load_at_writes,
        open_seconds,
        rss_without,
        rss_with,
        idle_cpu_without,
        idle_cpu_with,
        busy,
        writes: &writes,
        check: &check,
    };
    summary.print();
    for line in complaints.iter().take(EXAMPLES) {
        eprintln!("service log: {line}");
    }
    if let Some(path) = &args.out {
        let text = serde_json::to_string_pretty(&summary.json()).expect("JSON summary");
        std::fs::write(path, text + "\n").expect("write --out");
    }
    if check.problems > 0 || written < writes.len() {
        eprintln!(
            "\nFAILED: {} problem(s) in what the watchers received, {} failed write(s)",
            check.problems,
            writes.len() - written
        );
        for example in &check.examples {
            eprintln!("  {example}");
        }
        for write in writes.iter().filter(|w| w.version.is_err()).take(EXAMPLES) {
            eprintln!("  write to agent {}: {:?}", write.agent, write.version);
        }
        std::process::exit(1);
    }
}

/// `count` agents; their ids.
async fn create_agents(api: &Api, count: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(count);
    for i in 0..count {
        let agent = api
            .create_agent(pb::CreateAgentRequest {
                agent: Some(pb::Agent {
                    name: format!("watched-{i}"),
                    role: "Senior Data Analyst".to_owned(),
                    goal: "Analyze complex datasets and report actionable findings".to_owned(),
                    ..Default::default()
                }),
                change_description: String::new(),
                ..Default::default()
            })
            .await
            .expect("CreateAgent")
            .into_inner();
        ids.push(agent.id);
    }
    ids
}

/// One watcher: opens a stream from now (in one of the opening slots),
/// reports its SYNCED revision on
/// `ready`, then records every change until `stopping` (or the stream
/// ends).
async fn follow(
    api: Api,
    opening_slots: Arc<Semaphore>,
    agents: Arc<HashMap<String, u32>>,
    ready: mpsc::Sender<Result<i64, String>>,
    mut stopping: watch::Receiver<bool>,
    delivered: Arc<AtomicU64>,
    expected: usize,
) -> Watched {
    let slot = opening_slots.acquire_owned().await.expect("never closed");
    let request = pb::WatchChangesRequest {
        after_revision: None,
        kinds: Vec::new(),
    };
    let mut stream = match api.watch_changes(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => {
            let why = format!("WatchChanges: {status:?}");
            let _ = ready.send(Err(why.clone())).await;
            return Watched {
                synced: 0,
                received: Vec::new(),
                ended: Some(why),
            };
        }
    };
    let synced = match stream.message().await {
        Ok(Some(first)) if first.action() == pb::ChangeAction::Synced => first.revision,
        other => {
            let why = format!("the first message was not SYNCED: {other:?}");
            let _ = ready.send(Err(why.clone())).await;
            return Watched {
                synced: 0,
                received: Vec::new(),
                ended: Some(why),
            };
        }
    };
    drop(slot);
    let _ = ready.send(Ok(synced)).await;
    drop(ready);
    let mut received = Vec::with_capacity(expected);
    let ended = loop {
        tokio::select! {
            message = stream.message() => match message {
                Ok(Some(change)) => {
                    let at = Instant::now();
                    received.push(Received {
                        revision: change.revision,
                        agent: agents.get(&change.resource_id).copied().unwrap_or(u32::MAX),
                        version: change.version_number,
                        at,
                    });
                    delivered.fetch_add(1, Ordering::Relaxed);
                }
                Ok(None) => break Some("the stream ended".to_owned()),
                Err(status) => break Some(format!("{:?}: {}", status.code(), status.message())),
            },
            _ = stopping.wait_for(|stop| *stop) => break None,
        }
    };
    Watched {
        synced,
        received,
        ended,
    }
}

/// `per_second × seconds` UpdateAgent calls, one every `1 / per_second`
/// seconds (round-robin over `agents`), each sent in a task of its own so a
/// slow answer delays no later write; every write once answered.
async fn write_on_schedule(
    api: &Api,
    agents: &[String],
    per_second: u32,
    seconds: u32,
) -> Vec<Write> {
    let total = per_second as usize * seconds as usize;
    let mut schedule = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(per_second)));
    schedule.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        schedule.tick().await;
        let agent = i % agents.len();
        let request = pb::UpdateAgentRequest {
            agent: Some(pb::Agent {
                id: agents[agent].clone(),
                goal: format!("Analyze datasets, pass {i}"),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["goal".to_owned()],
            }),
            change_description: String::new(),
            ..Default::default()
        };
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let answer = api.update_agent(request).await;
            Write {
                agent: u32::try_from(agent).expect("few agents"),
                sent,
                answered: Instant::now(),
                version: answer
                    .map(|agent| agent.into_inner().version)
                    .map_err(|status| format!("{:?}: {}", status.code(), status.message())),
            }
        }));
    }
    let mut writes = Vec::with_capacity(total);
    for task in tasks {
        writes.push(task.await.expect("a write task"));
    }
    writes
}

/// What the watchers received, checked against the writes.
#[derive(Debug, Default)]
struct Check {
    /// Receive instant − the write's send instant, every (watcher, change).
    every: Vec<Duration>,
    /// Per change: to its first watcher, and to its last.
    first: Vec<Duration>,
    last: Vec<Duration>,
    /// UpdateAgent's own latency (sent → answered).
    write: Vec<Duration>,
    /// Receive instant − the write's answer instant, every (watcher,
    /// change), in ms: the delivery without the write's own latency
    /// (negative when the change arrived before the answer).
    after_answer: Vec<f64>,
    /// (watcher, change) pairs received as expected.
    delivered: u64,
    /// Pairs expected: watchers × successful writes.
    expected: u64,
    /// Missing, repeated, reordered or unknown changes, and streams that
    /// ended by themselves.
    problems: u64,
    examples: Vec<String>,
}

impl Check {
    /// Every watcher must have received exactly the successful writes'
    /// changes, one revision after another from its SYNCED revision; a
    /// write's revision must be the same for every watcher.
    fn of(writes: &[Write], watched: &[Watched]) -> Self {
        let mut check = Self::default();
        let mut write_of: HashMap<(u32, i64), usize> = HashMap::new();
        for (index, write) in writes.iter().enumerate() {
            if let Ok(version) = write.version {
                check.write.push(write.answered.duration_since(write.sent));
                if write_of.insert((write.agent, version), index).is_some() {
                    check.problem(format!(
                        "two writes answered agent {} version {version}",
                        write.agent
                    ));
                }
            }
        }
        let written = write_of.len();
        check.expected = (written * watched.len()) as u64;
        let mut revision_of: Vec<Option<i64>> = vec![None; writes.len()];
        let mut first: Vec<Option<Instant>> = vec![None; writes.len()];
        let mut last: Vec<Option<Instant>> = vec![None; writes.len()];
        check.every.reserve(check.expected as usize);
        for (w, watcher) in watched.iter().enumerate() {
            if let Some(why) = &watcher.ended {
                check.problem(format!("watcher {w}'s stream ended: {why}"));
            }
            if watcher.received.len() != written {
                check.problem(format!(
                    "watcher {w} received {} changes, {written} were written",
                    watcher.received.len()
                ));
            }
            let mut seen = vec![false; writes.len()];
            for (position, change) in watcher.received.iter().enumerate() {
                let in_order = watcher.synced + 1 + position as i64;
                if change.revision != in_order {
                    check.problem(format!(
                        "watcher {w}: revision {} at position {position}, {in_order} expected",
                        change.revision
                    ));
                    continue;
                }
                let Some(&index) = write_of.get(&(change.agent, change.version)) else {
                    check.problem(format!(
                        "watcher {w}: revision {} is no write of the bench (agent {}, version {})",
                        change.revision, change.agent, change.version
                    ));
                    continue;
                };
                if std::mem::replace(&mut seen[index], true) {
                    check.problem(format!("watcher {w}: write {index} received twice"));
                    continue;
                }
                match revision_of[index] {
                    None => revision_of[index] = Some(change.revision),
                    Some(revision) if revision != change.revision => {
                        check.problem(format!(
                            "write {index} is revision {revision} for one watcher, {} for watcher {w}",
                            change.revision
                        ));
                        continue;
                    }
                    Some(_) => {}
                }
                let Write { sent, answered, .. } = writes[index];
                check.every.push(change.at.saturating_duration_since(sent));
                check.after_answer.push(signed_ms(change.at, answered));
                check.delivered += 1;
                let earliest = first[index].get_or_insert(change.at);
                *earliest = (*earliest).min(change.at);
                let latest = last[index].get_or_insert(change.at);
                *latest = (*latest).max(change.at);
            }
        }
        for (index, write) in writes.iter().enumerate() {
            if let (Some(first), Some(last)) = (first[index], last[index]) {
                check
                    .first
                    .push(first.saturating_duration_since(write.sent));
                check.last.push(last.saturating_duration_since(write.sent));
            }
        }
        for series in [
            &mut check.every,
            &mut check.first,
            &mut check.last,
            &mut check.write,
        ] {
            series.sort_unstable();
        }
        check.after_answer.sort_by(f64::total_cmp);
        check
    }

    fn problem(&mut self, what: String) {
        self.problems += 1;
        if self.examples.len() < EXAMPLES {
            self.examples.push(what);
        }
    }
}

/// p50, p99 and max of sorted samples, in milliseconds.
fn spread(sorted: &[Duration]) -> (f64, f64, f64) {
    let ms = |d: Duration| round3(d.as_secs_f64() * 1e3);
    (
        ms(percentile(sorted, 0.50)),
        ms(percentile(sorted, 0.99)),
        ms(sorted.last().copied().unwrap_or_default()),
    )
}

/// `later − earlier` in ms, negative when `later` came first.
fn signed_ms(later: Instant, earlier: Instant) -> f64 {
    match later.checked_duration_since(earlier) {
        Some(after) => after.as_secs_f64() * 1e3,
        None => -(earlier.duration_since(later).as_secs_f64() * 1e3),
    }
}

/// p50, p99 and max of sorted milliseconds.
fn spread_ms(sorted: &[f64]) -> (f64, f64, f64) {
    let at = |q: f64| {
        let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len().max(1));
        sorted.get(rank - 1).copied().map(round3).unwrap_or(0.0)
    };
    (at(0.50), at(0.99), at(1.0))
}

/// The 1-, 5- and 15-minute load averages (/proc/loadavg).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Everything measured, for the tables and the JSON.
struct Summary<'a> {
    args: &'a WatchArgs,
    load_at_start: String,
    load_at_writes: String,
    open_seconds: f64,
    rss_without: u64,
    rss_with: u64,
    idle_cpu_without: CpuPercent,
    idle_cpu_with: CpuPercent,
    busy: CpuPercent,
    writes: &'a [Write],
    check: &'a Check,
}

impl Summary<'_> {
    /// p99 target of change-to-event latency, ms (issue 17).
    fn p99_target_ms(&self) -> f64 {
        match self.args.target.db {
            Db::Sqlite => 50.0,
            Db::Postgres => 100.0,
        }
    }

    fn kib_per_watcher(&self) -> f64 {
        (self.rss_with as f64 - self.rss_without as f64) / self.args.watchers.max(1) as f64
    }

    fn print(&self) {
        let args = self.args;
        let setup = match args.target.db {
            Db::Sqlite => "SQLite, one registry".to_owned(),
            Db::Postgres => {
                "PostgreSQL, watchers on replica A, writes through replica B".to_owned()
            }
        };
        println!(
            "\nWatchChanges, {setup}: {} watchers over {} connections, {} writes/s for {} s \
             ({} writes over {} connections, {} agents); load average {} at the start, {} at \
             the writes",
            args.watchers,
            args.watch_connections,
            args.writes_per_second,
            args.seconds,
            self.writes.len(),
            args.target.connections,
            args.agents,
            self.load_at_start,
            self.load_at_writes,
        );
        println!("| latency | samples | p50 ms | p99 ms | max ms |");
        println!("|---|---|---|---|---|");
        let check = self.check;
        for (name, series) in [
            ("UpdateAgent (sent → answered)", &check.write),
            ("change → its first watcher", &check.first),
            ("change → every watcher", &check.every),
            ("change → its last watcher", &check.last),
        ] {
            let (p50, p99, max) = spread(series);
            println!("| {name} | {} | {p50} | {p99} | {max} |", series.len());
        }
        let (p50, p99, max) = spread_ms(&check.after_answer);
        println!(
            "| change → every watcher, after the write's answer | {} | {p50} | {p99} | {max} |",
            check.after_answer.len()
        );
        let (_, p99, _) = spread(&check.every);
        let target = self.p99_target_ms();
        println!(
            "\n(watcher, change) pairs received: {} of {}; problems: {}. \
             Change-to-event p99 {p99} ms, target ≤ {target} ms: {}.",
            check.delivered,
            check.expected,
            check.problems,
            met(p99 <= target)
        );
        let busy = self.busy;
        println!(
            "CPU during the writes ({:.1} s, % of one core): registry {}{}{}, bench client {}",
            busy.seconds,
            busy.registry,
            match args.target.db {
                Db::Postgres => format!(", replica B {}", busy.replica),
                Db::Sqlite => String::new(),
            },
            match args.target.db {
                Db::Postgres => format!(", PostgreSQL {}", busy.database),
                Db::Sqlite => String::new(),
            },
            busy.bench,
        );
        let per_watcher = self.kib_per_watcher();
        println!("\n| idle registry | watchers open | RSS KiB | CPU % of one core |");
        println!("|---|---|---|---|");
        println!(
            "| before the streams | 0 | {} | {} |",
            self.rss_without, self.idle_cpu_without.registry
        );
        println!(
            "| streams open, synced (opened in {:.2} s) | {} | {} | {} |",
            self.open_seconds, args.watchers, self.rss_with, self.idle_cpu_with.registry
        );
        println!(
            "\nMemory per idle watcher: {:.1} KiB, target ≤ 16 KiB: {}.",
            per_watcher,
            met(per_watcher <= 16.0)
        );
    }

    fn json(&self) -> serde_json::Value {
        let args = self.args;
        let check = self.check;
        let latency = |series: &[Duration]| {
            let (p50, p99, max) = spread(series);
            json!({ "samples": series.len(), "p50_ms": p50, "p99_ms": p99, "max_ms": max })
        };
        let cpu = |cpu: CpuPercent| {
            json!({
                "seconds": round3(cpu.seconds),
                "registry_percent": cpu.registry,
                "replica_percent": cpu.replica,
                "database_percent": cpu.database,
                "bench_percent": cpu.bench,
            })
        };
        let (_, p99, _) = spread(&check.every);
        let per_watcher = self.kib_per_watcher();
        let after_answer = {
            let (p50, p99, max) = spread_ms(&check.after_answer);
            json!({ "p50_ms": p50, "p99_ms": p99, "max_ms": max })
        };
        json!({
            "tool": "bench watch",
            "config": {
                "db": args.target.db.name(),
                "watchers": args.watchers,
                "watch_connections": args.watch_connections,
                "open_concurrency": args.open_concurrency,
                "writes_per_second": args.writes_per_second,
                "seconds": args.seconds,
                "agents": args.agents,
                "writer_connections": args.target.connections,
                "idle_seconds": args.idle_seconds,
            },
            "load_average_at_start": self.load_at_start,
            "load_average_at_writes": self.load_at_writes,
            "writes": self.writes.len(),
            "failed_writes": self.writes.iter().filter(|w| w.version.is_err()).count(),
            "latency": {
                "update_agent": latency(&check.write),
                "change_to_first_watcher": latency(&check.first),
                "change_to_every_watcher": latency(&check.every),
                "change_to_last_watcher": latency(&check.last),
                "change_to_every_watcher_after_answer": after_answer,
            },
            "pairs_delivered": check.delivered,
            "pairs_expected": check.expected,
            "problems": check.problems,
            "problem_examples": check.examples,
            "cpu_during_writes": cpu(self.busy),
            "streams_open_seconds": round3(self.open_seconds),
            "idle": {
                "rss_kib_without_watchers": self.rss_without,
                "rss_kib_with_watchers": self.rss_with,
                "kib_per_watcher": round1(per_watcher),
                "cpu_without_watchers": cpu(self.idle_cpu_without),
                "cpu_with_watchers": cpu(self.idle_cpu_with),
            },
            "targets": {
                "p99_ms": self.p99_target_ms(),
                "p99_met": p99 <= self.p99_target_ms(),
                "kib_per_watcher": 16.0,
                "kib_per_watcher_met": per_watcher <= 16.0,
            },
        })
    }
}

fn met(yes: bool) -> &'static str {
    if yes { "met" } else { "NOT met" }
}
