//! `bench abuse`: the attacks of issue 15, each at the registry's message
//! limit (256 KiB by default, `--limit`), against the release pair
//! (SQLite), with the figures the issue's acceptance asks for.
//!
//! | attack | server | calls | answer |
//! |---|---|---|---|
//! | unique-path flood | both | `--paths` unknown paths, no token, empty body | UNIMPLEMENTED |
//! | long-path flood | both | `--long-paths` unknown paths of 4 KiB | UNIMPLEMENTED |
//! | tool bomb | registry | CreateAgent, as many distinct tools as fit | INVALID_ARGUMENT |
//! | mask bomb | registry | UpdateAgent, `llm_overrides.stop` and the mask path `llm_overrides` repeated, half the limit each | INVALID_ARGUMENT |
//! | provider stop bomb | registry | CreateProvider, `default_parameters.stop` as large as fits | INVALID_ARGUMENT |
//! | tool bomb over the limit | registry | CreateAgent, as many tools as fit in 4 MiB (the old limit) | OUT_OF_RANGE |
//! | garbage tokens | registry | real methods, empty body, a token that is not one the registry issued | UNAUTHENTICATED |
//! | garbage tokens, 4 MiB body | registry | CreateAgent with the 4 MiB tool bomb's body and a garbage token | UNAUTHENTICATED |
//!
//! Each attack runs twice with `--attackers` concurrent attackers, each on
//! its own HTTP/2 connection, sending one call after another:
//!
//! 1. alone: the attacked server's CPU (utime + stime from
//!    /proc/<pid>/stat over the phase, a settle pause included) divided by
//!    the calls, and its VmRSS before and after;
//! 2. the same calls again while `grpc.health.v1.Health/Check` is sent one
//!    after another on a connection of its own: p50, p99 and max of those
//!    checks. Kept out of phase 1 so the checks' own CPU is not counted as
//!    the attack's.
//!
//! Every request body is encoded once, before any phase, and shared by the
//! calls, so the client's share of the two cores stays small. The flood's RSS and `/metrics`
//! figures start after a warm-up of 2,000 unknown paths that lets the
//! allocator and the connections settle.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use prost::Message;
use prost::bytes::{Buf, BufMut, Bytes};
use proto::v1 as pb;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::pair::{Options, Pair, Target, random_hex};
use crate::stats::{cpu_seconds, percentile, vm_rss_kib};

/// Every attack request may cost at most this much server CPU.
const CPU_TARGET_MS: f64 = 50.0;
/// Health/Check p99 during an attack.
const HEALTH_P99_TARGET_MS: f64 = 20.0;
/// RSS growth of a server after the unique-path flood, in MB (10^6 bytes).
const RSS_GROWTH_TARGET_MB: f64 = 5.0;
/// Idle time inside each CPU window after the last answer, so work the
/// server finishes after answering (dropping a decoded request) is counted.
const SETTLE: Duration = Duration::from_millis(200);
/// How long Health/Check runs alone before the attacks on a server.
const IDLE: Duration = Duration::from_secs(3);
/// Unknown paths sent before the flood's "before" figures are read.
const WARM_UP_PATHS: usize = 2_000;

/// Flags of `bench abuse`.
#[derive(Debug, Clone, clap::Args)]
pub struct AbuseArgs {
    #[command(flatten)]
    pub target: Target,
    /// Concurrent attackers, each on its own connection.
    #[arg(long, default_value_t = 8)]
    pub attackers: usize,
    /// Unknown paths per phase of the unique-path flood.
    #[arg(long, default_value_t = 100_000)]
    pub paths: usize,
    /// Unknown paths per phase of the long-path flood.
    #[arg(long, default_value_t = 10_000)]
    pub long_paths: usize,
    /// Length of each long path, in bytes.
    #[arg(long, default_value_t = 4096)]
    pub long_path_bytes: usize,
    /// Requests per phase of each bomb.
    #[arg(long, default_value_t = 64)]
    pub bombs: usize,
    /// Requests per phase of the garbage-token attack with empty bodies.
    #[arg(long, default_value_t = 20_000)]
    pub bad_tokens: usize,
    /// Requests per phase of the garbage-token attack with 4 MiB bodies
    /// (refused after 64 KiB are read, so many more than `--bombs` are
    /// needed for a phase long enough to sample Health/Check).
    #[arg(long, default_value_t = 1_000)]
    pub big_bad_tokens: usize,
    /// The registry's message-size limit (its default): the bombs fill it.
    #[arg(long, default_value_t = 256 * 1024)]
    pub limit: usize,
}

/// Runs every attack and prints one table row per attack and server.
pub async fn run(args: AbuseArgs) {
    let load_before = load_average();
    let pair = Pair::start_with(
        &args.target,
        Options {
            metrics: true,
            ..Options::default()
        },
    )
    .await;
    let (registry_metrics, crypto_metrics) = pair.metrics_addresses();
    let registry = Server {
        name: "registry",
        url: pair.registry_url(),
        pid: pair.registry_pid(),
        metrics: registry_metrics.expect("registry-service logs its metrics address"),
    };
    let crypto = Server {
        name: "crypto",
        url: pair.crypto_url(),
        pid: pair.crypto_pid(),
        metrics: crypto_metrics.expect("crypto-service logs its metrics address"),
    };
    let token = bearer(&tests::auth::token("bench", "bench", &["admin", "editor"]));
    let target_agent = pair
        .api
        .create_agent(pb::CreateAgentRequest {
            agent: Some(agent("target")),
            change_description: String::new(),
            ..Default::default()
        })
        .await
        .expect("the mask bomb's target agent")
        .into_inner()
        .id;

    println!(
        "bench abuse: {} attackers, message limit {} bytes, load average before start: {load_before}",
        args.attackers, args.limit
    );
    let bodies = Bodies::encode(args.limit, &target_agent);
    println!("{}", bodies.describe());
    // The tool bomb at the old 4 MiB limit: refused by its length prefix.
    let oversize = Bodies::encode(OLD_LIMIT, &target_agent).tools;
    println!();
    println!("{}", Row::header());

    let mut rows = Vec::new();
    for server in [&registry, &crypto] {
        rows.push(idle(server).await);
        print_last(&rows);
        rows.extend(flood(server, &args).await);
    }
    let bombs = [
        ("tool bomb", CREATE_AGENT, &bodies.tools, "InvalidArgument"),
        ("mask bomb", UPDATE_AGENT, &bodies.mask, "InvalidArgument"),
        (
            "provider stop bomb",
            CREATE_PROVIDER,
            &bodies.provider_stop,
            "InvalidArgument",
        ),
        (
            "tool bomb over the limit (4 MiB)",
            CREATE_AGENT,
            &oversize,
            "OutOfRange",
        ),
    ];
    for (name, method, body, expected) in bombs {
        let body = body.clone();
        let token = token.clone();
        let attack = Attack {
            name: name.to_owned(),
            expected,
            calls: args.bombs,
            make: Arc::new(move |_| Call {
                path: method.to_owned(),
                body: body.clone(),
                token: Some(token.clone()),
            }),
        };
        rows.push(measure(&registry, &attack, args.attackers).await);
        print_last(&rows);
    }
    let garbage = Arc::new(garbage_tokens());
    for (name, calls, body) in [
        ("garbage tokens", args.bad_tokens, Bytes::new()),
        (
            "garbage tokens, 4 MiB body",
            args.big_bad_tokens,
            oversize.clone(),
        ),
    ] {
        let garbage = Arc::clone(&garbage);
        let big = !body.is_empty();
        let attack = Attack {
            name: name.to_owned(),
            expected: "Unauthenticated",
            calls,
            make: Arc::new(move |i| Call {
                path: if big {
                    CREATE_AGENT.to_owned()
                } else {
                    REAL_METHODS[i % REAL_METHODS.len()].to_owned()
                },
                body: body.clone(),
                token: Some(garbage[i % garbage.len()].clone()),
            }),
        };
        rows.push(measure(&registry, &attack, args.attackers).await);
        print_last(&rows);
    }

    let complaints = pair.complaints();
    pair.stop().await;
    println!("\nall rows again, with the /metrics sizes:\n");
    println!("{}", Row::header());
    for row in &rows {
        println!("{}", row.row());
    }
    println!();
    println!("load average after: {}", load_average());
    summarize(&rows);
    if !complaints.is_empty() {
        println!(
            "\nthe services logged {} warnings or errors; the first:",
            complaints.len()
        );
        for line in complaints.iter().take(5) {
            println!("  {line}");
        }
    }
}

/// The message limit before issue 15 (and tonic's default).
const OLD_LIMIT: usize = 4 * 1024 * 1024;

const CREATE_AGENT: &str = "/agentregistry.v1.AgentService/CreateAgent";
const UPDATE_AGENT: &str = "/agentregistry.v1.AgentService/UpdateAgent";
const CREATE_PROVIDER: &str = "/agentregistry.v1.ProviderService/CreateProvider";
/// Methods the garbage-token attack calls, in turn (an empty body is a
/// valid request to each).
const REAL_METHODS: [&str; 5] = [
    CREATE_AGENT,
    "/agentregistry.v1.AgentService/ListAgents",
    "/agentregistry.v1.ProviderService/GetProvider",
    "/agentregistry.v1.RuntimeService/ResolveAgent",
    "/agentregistry.v1.KeyService/RewrapCredentials",
];

/// One attacked server.
#[derive(Debug)]
struct Server {
    name: &'static str,
    url: String,
    pid: u32,
    /// `HOST:PORT` of its `/metrics`.
    metrics: String,
}

/// One request an attacker sends.
#[derive(Debug)]
struct Call {
    path: String,
    /// Shared, never copied per call (a clone is a reference count).
    body: Bytes,
    token: Option<AsciiMetadataValue>,
}

/// The `i`-th request of an attack (`i` counts on across both phases, so
/// every unknown path is new).
type MakeCall = Arc<dyn Fn(usize) -> Call + Send + Sync>;

struct Attack {
    name: String,
    /// The code every call should get (`tonic::Code`'s `Debug` name).
    expected: &'static str,
    /// Calls per phase.
    calls: usize,
    make: MakeCall,
}

/// The figures of one attack on one server.
#[derive(Debug, Default)]
struct Row {
    attack: String,
    server: &'static str,
    calls: usize,
    expected: &'static str,
    /// Answers of both phases, by code.
    answers: BTreeMap<String, usize>,
    cpu_ms_per_call: f64,
    /// Wall time of phase 1.
    elapsed: Duration,
    /// Attack calls' own latency in phase 1 (wall time, 8 in flight).
    call_p50: Duration,
    call_max: Duration,
    health: Vec<Duration>,
    health_failures: usize,
    /// VmRSS (KiB) before phase 1, after it, and after phase 2.
    rss_kib: [u64; 3],
    /// Whether the RSS growth target applies (the unique-path flood).
    rss_target: bool,
    /// `/metrics` bytes before and after the flood (both phases).
    metrics_bytes: Option<(usize, usize)>,
}

impl Row {
    fn header() -> String {
        [
            "| attack | server | calls/phase | answers (both phases) | server CPU ms/call | ≤ 50 ms | phase 1 s | attack call p50 / max ms | health checks | health p50 / p99 / max ms | p99 ≤ 20 ms | RSS MB before → after phase 1 → after phase 2 | growth ≤ 5 MB | /metrics bytes before → after |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        .join("\n")
    }

    fn health_percentile(&self, q: f64) -> Duration {
        percentile(&self.health, q)
    }

    fn cpu_pass(&self) -> bool {
        self.cpu_ms_per_call <= CPU_TARGET_MS
    }

    fn health_pass(&self) -> bool {
        self.health_failures == 0 && ms(self.health_percentile(0.99)) <= HEALTH_P99_TARGET_MS
    }

    /// RSS growth over phase 1, in MB.
    fn rss_growth_mb(&self) -> f64 {
        (self.rss_kib[1] as f64 - self.rss_kib[0] as f64) * 1024.0 / 1e6
    }

    fn rss_pass(&self) -> Option<bool> {
        self.rss_target
            .then(|| self.rss_growth_mb() <= RSS_GROWTH_TARGET_MB)
    }

    fn row(&self) -> String {
        let answers: Vec<String> = self
            .answers
            .iter()
            .map(|(code, count)| {
                let mark = if code == self.expected { "" } else { " (!)" };
                format!("{code} {count}{mark}")
            })
            .collect();
        let mb = |kib: u64| kib as f64 * 1024.0 / 1e6;
        let health = if self.health_failures == 0 {
            self.health.len().to_string()
        } else {
            format!("{} ({} failed)", self.health.len(), self.health_failures)
        };
        let rss = match self.rss_pass() {
            Some(pass) => format!("{:+.2} MB {}", self.rss_growth_mb(), verdict(pass)),
            None => "–".to_owned(),
        };
        let metrics = self
            .metrics_bytes
            .map_or("–".to_owned(), |(before, after)| {
                format!("{before} → {after}")
            });
        format!(
            "| {} | {} | {} | {} | {:.3} | {} | {:.2} | {:.2} / {:.2} | {} | {:.2} / {:.2} / {:.2} | {} | {:.1} → {:.1} → {:.1} | {} | {} |",
            self.attack,
            self.server,
            self.calls,
            answers.join(", "),
            self.cpu_ms_per_call,
            verdict(self.cpu_pass()),
            self.elapsed.as_secs_f64(),
            ms(self.call_p50),
            ms(self.call_max),
            health,
            ms(self.health_percentile(0.50)),
            ms(self.health_percentile(0.99)),
            ms(self.health_percentile(1.0)),
            verdict(self.health_pass()),
            mb(self.rss_kib[0]),
            mb(self.rss_kib[1]),
            mb(self.rss_kib[2]),
            rss,
            metrics,
        )
    }
}

/// Health/Check alone for [`IDLE`]: the machine's own noise, for scale.
async fn idle(server: &Server) -> Row {
    let rss = vm_rss_kib(server.pid);
    let cpu_before = cpu_seconds(server.pid);
    let probe = Probe::start(&server.url).await;
    tokio::time::sleep(IDLE).await;
    let (health, health_failures) = probe.stop().await;
    Row {
        attack: "none (Health/Check alone)".to_owned(),
        server: server.name,
        expected: "Ok",
        answers: BTreeMap::from([("Ok".to_owned(), health.len())]),
        cpu_ms_per_call: (cpu_seconds(server.pid) - cpu_before) * 1e3 / health.len().max(1) as f64,
        elapsed: IDLE,
        health,
        health_failures,
        rss_kib: [rss, rss, vm_rss_kib(server.pid)],
        ..Row::default()
    }
}

/// The unique-path flood, then the long-path flood, on `server`; the
/// `/metrics` sizes span both.
async fn flood(server: &Server, args: &AbuseArgs) -> Vec<Row> {
    let run = random_hex(4);
    let unknown = |tag: &'static str, length: usize, calls: usize| {
        let run = run.clone();
        Attack {
            name: if length == 0 {
                "unique-path flood".to_owned()
            } else {
                format!("{length}-byte path flood")
            },
            expected: "Unimplemented",
            calls,
            make: Arc::new(move |i| {
                let head = format!("/flood.{run}{tag}{i}.Svc/M");
                let padding = "x".repeat(length.saturating_sub(head.len()));
                Call {
                    path: format!("{head}{padding}"),
                    body: Bytes::new(),
                    token: None,
                }
            }),
        }
    };
    let warm_up = unknown("w", 0, WARM_UP_PATHS);
    let channels = connect(&server.url, args.attackers).await;
    let _ = attack(&channels, &warm_up, 0).await;
    let metrics_before = tests::http_get(&server.metrics, "/metrics").await.len();

    let mut rows = Vec::new();
    for attack in [
        unknown("u", 0, args.paths),
        unknown("l", args.long_path_bytes, args.long_paths),
    ] {
        let mut row = measure(server, &attack, args.attackers).await;
        row.rss_target = attack.name == "unique-path flood";
        println!("{}", row.row());
        rows.push(row);
    }
    let metrics_after = tests::http_get(&server.metrics, "/metrics").await.len();
    for row in &mut rows {
        row.metrics_bytes = Some((metrics_before, metrics_after));
    }
    rows
}

/// Both phases of `attack` on `server` (see the module comment).
async fn measure(server: &Server, attack: &Attack, attackers: usize) -> Row {
    let channels = connect(&server.url, attackers).await;
    let rss_before = vm_rss_kib(server.pid);
    let cpu_before = cpu_seconds(server.pid);
    let started = Instant::now();
    let alone = self::attack(&channels, attack, 0).await;
    let elapsed = started.elapsed();
    tokio::time::sleep(SETTLE).await;
    let cpu = cpu_seconds(server.pid) - cpu_before;
    let rss_after_alone = vm_rss_kib(server.pid);

    let probe = Probe::start(&server.url).await;
    let probed = self::attack(&channels, attack, attack.calls).await;
    let (health, health_failures) = probe.stop().await;
    let rss_after_probed = vm_rss_kib(server.pid);

    let mut answers = alone.answers;
    for (code, count) in probed.answers {
        *answers.entry(code).or_default() += count;
    }
    let mut latencies = alone.latencies;
    latencies.sort();
    Row {
        attack: attack.name.clone(),
        server: server.name,
        calls: attack.calls,
        expected: attack.expected,
        answers,
        cpu_ms_per_call: cpu * 1e3 / attack.calls.max(1) as f64,
        elapsed,
        call_p50: percentile(&latencies, 0.50),
        call_max: percentile(&latencies, 1.0),
        health,
        health_failures,
        rss_kib: [rss_before, rss_after_alone, rss_after_probed],
        rss_target: false,
        metrics_bytes: None,
    }
}

/// What the attackers of one phase got back.
#[derive(Debug, Default)]
struct Answers {
    latencies: Vec<Duration>,
    answers: BTreeMap<String, usize>,
}

/// Sends calls `first..first + attack.calls`, one attacker per channel,
/// each taking the next call when its last one is answered.
async fn attack(channels: &[Channel], attack: &Attack, first: usize) -> Answers {
    let next = Arc::new(AtomicUsize::new(first));
    let end = first + attack.calls;
    let mut attackers = Vec::new();
    for channel in channels {
        let channel = channel.clone();
        let next = Arc::clone(&next);
        let make = Arc::clone(&attack.make);
        attackers.push(tokio::spawn(async move {
            let mut mine = Answers::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= end {
                    return mine;
                }
                let call = make(i);
                let mut request = tonic::Request::new(call.body);
                if let Some(token) = call.token {
                    request.metadata_mut().insert("authorization", token);
                }
                let started = Instant::now();
                let result = send(channel.clone(), &call.path, request).await;
                mine.latencies.push(started.elapsed());
                *mine.answers.entry(answer_name(&result)).or_default() += 1;
            }
        }));
    }
    let mut all = Answers::default();
    for attacker in attackers {
        let mine = attacker.await.expect("attacker task");
        all.latencies.extend(mine.latencies);
        for (code, count) in mine.answers {
            *all.answers.entry(code).or_default() += count;
        }
    }
    all
}

/// The code of an answer by its `tonic::Code` name; a client-side
/// transport error (hyper reporting its own failed send of a body the
/// server stopped reading, not a status the server sent) is named apart.
fn answer_name(result: &Result<tonic::Response<()>, tonic::Status>) -> String {
    match result {
        Ok(_) => "Ok".to_owned(),
        Err(status)
            if status.code() == tonic::Code::Unknown && status.message() == "transport error" =>
        {
            "client transport error".to_owned()
        }
        Err(status) => format!("{:?}", status.code()),
    }
}

/// Calls the unary `path` with `request`'s bytes as the message (the
/// answer's message is read and dropped).
async fn send(
    channel: Channel,
    path: &str,
    request: tonic::Request<Bytes>,
) -> Result<tonic::Response<()>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = PathAndQuery::try_from(path)
        .map_err(|e| tonic::Status::invalid_argument(format!("path: {e}")))?;
    grpc.unary(request, path, SharedBytes).await
}

/// A codec that sends messages already encoded, as shared [`Bytes`] (the
/// encoder's one copy into the frame buffer is the only one per call), and
/// ignores the bytes of answers.
#[derive(Debug, Clone, Copy, Default)]
struct SharedBytes;

impl Codec for SharedBytes {
    type Encode = Bytes;
    type Decode = ();
    type Encoder = Self;
    type Decoder = Self;

    fn encoder(&mut self) -> Self::Encoder {
        Self
    }

    fn decoder(&mut self) -> Self::Decoder {
        Self
    }
}

impl Encoder for SharedBytes {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for SharedBytes {
    type Item = ();
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<()>, tonic::Status> {
        src.advance(src.remaining());
        Ok(Some(()))
    }
}

/// `count` plaintext HTTP/2 connections to `url`.
async fn connect(url: &str, count: usize) -> Vec<Channel> {
    let mut channels = Vec::new();
    for _ in 0..count.max(1) {
        channels.push(
            Endpoint::from_shared(url.to_owned())
                .expect("a server URL")
                .tcp_nodelay(true)
                .connect()
                .await
                .expect("connect to the attacked server"),
        );
    }
    channels
}

/// `grpc.health.v1.Health/Check`, one after another on a connection of its
/// own, until stopped. It runs on a thread and runtime of its own: on the
/// attackers' runtime a check's answer would wait behind the attackers'
/// tasks in this process, and that wait would be counted as the server's.
struct Probe {
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<(Vec<Duration>, usize)>,
}

impl Probe {
    /// Connects, then returns while the first check is sent.
    async fn start(url: &str) -> Self {
        let url = url.to_owned();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let (connected, is_connected) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("the health probe's runtime");
            runtime.block_on(async move {
                let channel = connect(&url, 1).await.remove(0);
                let _ = connected.send(());
                probe(channel, &mut stopped).await
            })
        });
        is_connected.await.expect("the health probe connects");
        Self { stop, thread }
    }

    /// The checks' latencies, sorted, and how many failed.
    async fn stop(self) -> (Vec<Duration>, usize) {
        let _ = self.stop.send(());
        let thread = self.thread;
        let (mut latencies, failures) = tokio::task::spawn_blocking(move || thread.join())
            .await
            .expect("joining the health probe")
            .expect("the health probe thread");
        latencies.sort();
        (latencies, failures)
    }
}

/// Checks until `stopped`; the latencies of the answered checks and the
/// number of failed ones.
async fn probe(
    channel: Channel,
    stopped: &mut tokio::sync::oneshot::Receiver<()>,
) -> (Vec<Duration>, usize) {
    let mut health = HealthClient::new(channel);
    let (mut latencies, mut failures) = (Vec::new(), 0);
    loop {
        let started = Instant::now();
        let check = health.check(HealthCheckRequest {
            service: String::new(),
        });
        tokio::select! {
            answer = check => {
                if answer.is_ok() {
                    latencies.push(started.elapsed());
                } else {
                    failures += 1;
                }
            }
            _ = &mut *stopped => return (latencies, failures),
        }
    }
}

/// The bombs' request bodies, each encoded once at the limit.
struct Bodies {
    tools: Bytes,
    tool_count: usize,
    mask: Bytes,
    mask_paths: usize,
    mask_stops: usize,
    provider_stop: Bytes,
    provider_stops: usize,
}

impl Bodies {
    fn encode(limit: usize, target_agent: &str) -> Self {
        // Distinct short names: lower-case hex of a counter.
        let names: Vec<String> = (0..limit / 3).map(|i| format!("{i:x}")).collect();
        let names = names.as_slice();

        let tool_bomb = |n: usize| pb::CreateAgentRequest {
            agent: Some(pb::Agent {
                tools: names[..n].to_vec(),
                ..agent("bomb")
            }),
            change_description: String::new(),
            ..Default::default()
        };
        let tool_count = largest_fitting(limit, names.len(), |n| tool_bomb(n).encoded_len());

        // Half the limit for the mask's paths, the rest for stop sequences.
        let mask_bomb = |paths: usize, stops: usize| pb::UpdateAgentRequest {
            agent: Some(pb::Agent {
                id: target_agent.to_owned(),
                llm_overrides: Some(pb::ModelParameters {
                    stop: names[..stops].to_vec(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["llm_overrides".to_owned(); paths],
            }),
            change_description: String::new(),
            ..Default::default()
        };
        let mask_paths = largest_fitting(limit / 2, limit / 15, |n| mask_bomb(n, 0).encoded_len());
        let mask_stops = largest_fitting(limit, names.len(), |n| {
            mask_bomb(mask_paths, n).encoded_len()
        });

        let provider_bomb = |n: usize| pb::CreateProviderRequest {
            provider: Some(pb::Provider {
                name: "bomb".into(),
                provider_type: pb::ProviderType::Openai.into(),
                model_name: "gpt-4".into(),
                default_parameters: Some(pb::ModelParameters {
                    stop: names[..n].to_vec(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            change_description: String::new(),
            ..Default::default()
        };
        let provider_stops =
            largest_fitting(limit, names.len(), |n| provider_bomb(n).encoded_len());

        Self {
            tools: tool_bomb(tool_count).encode_to_vec().into(),
            tool_count,
            mask: mask_bomb(mask_paths, mask_stops).encode_to_vec().into(),
            mask_paths,
            mask_stops,
            provider_stop: provider_bomb(provider_stops).encode_to_vec().into(),
            provider_stops,
        }
    }

    fn describe(&self) -> String {
        let tools = decode_ms::<pb::CreateAgentRequest>(&self.tools);
        let mask = decode_ms::<pb::UpdateAgentRequest>(&self.mask);
        let provider = decode_ms::<pb::CreateProviderRequest>(&self.provider_stop);
        format!(
            "bodies: tool bomb {} tools ({} bytes); mask bomb {} stop sequences + {} mask paths ({} bytes); provider stop bomb {} stop sequences ({} bytes)\n\
             prost decode + drop of each body in this process (median of 5): tool bomb {tools:.2} ms, mask bomb {mask:.2} ms, provider stop bomb {provider:.2} ms",
            self.tool_count,
            self.tools.len(),
            self.mask_stops,
            self.mask_paths,
            self.mask.len(),
            self.provider_stops,
            self.provider_stop.len(),
        )
    }
}

/// Milliseconds to decode `body` as `M` and drop it, median of 5: the
/// share of a bomb's server CPU that is protobuf decoding, which tonic
/// does before any handler or validation runs.
fn decode_ms<M: Message + Default>(body: &[u8]) -> f64 {
    let mut runs: Vec<f64> = (0..5)
        .map(|_| {
            let started = Instant::now();
            let decoded = M::decode(body).expect("a bomb body decodes");
            drop(std::hint::black_box(decoded));
            ms(started.elapsed())
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    runs[2]
}

/// The largest `n` in `0..=most` for which `length(n)` ≤ `limit`, for a
/// `length` that grows with `n` (binary search).
fn largest_fitting(limit: usize, most: usize, length: impl Fn(usize) -> usize) -> usize {
    let (mut fits, mut too_many) = (0, most + 1);
    while too_many - fits > 1 {
        let middle = fits + (too_many - fits) / 2;
        if length(middle) <= limit {
            fits = middle;
        } else {
            too_many = middle;
        }
    }
    fits
}

/// Tokens the registry never issued, each `Bearer …`: random text, random
/// base64url segments, a well-formed HS256 token under another secret,
/// `alg: none` with no signature, and the right secret over a header that
/// names an unknown key.
fn garbage_tokens() -> Vec<AsciiMetadataValue> {
    use base64::Engine;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let claims = tests::auth::claims("mallory", "bench", &["admin", "editor", "runtime"]);
    let claims_json = claims.to_string();
    let random = |n: usize| {
        let mut bytes = vec![0u8; n];
        getrandom::fill(&mut bytes).expect("the OS random number generator");
        bytes
    };
    [
        format!("garbage-{}", random_hex(32)),
        format!(
            "{}.{}.{}",
            b64(&random(36)),
            b64(&random(120)),
            b64(&random(32))
        ),
        tests::auth::sign_with(&claims, b"not-the-registry-secret-0123456789abcdef"),
        format!(
            "{}.{}.",
            b64(br#"{"alg":"none","typ":"JWT"}"#),
            b64(claims_json.as_bytes())
        ),
        tests::auth::sign_raw(
            br#"{"alg":"HS256","typ":"JWT","kid":"no-such-key"}"#,
            claims_json.as_bytes(),
        ),
    ]
    .iter()
    .map(|token| bearer(token))
    .collect()
}

fn bearer(token: &str) -> AsciiMetadataValue {
    format!("Bearer {token}")
        .parse()
        .expect("a token is printable ASCII")
}

fn agent(name: &str) -> pb::Agent {
    pb::Agent {
        name: name.into(),
        role: "Analyst".into(),
        goal: "Analyze".into(),
        backstory: "Expert".into(),
        ..Default::default()
    }
}

fn print_last(rows: &[Row]) {
    if let Some(row) = rows.last() {
        println!("{}", row.row());
    }
}

/// Pass/fail per target, with the margin of each failure.
fn summarize(rows: &[Row]) {
    println!("\ntargets:");
    for row in rows {
        let what = format!("{} on {}", row.attack, row.server);
        if !row.cpu_pass() {
            println!(
                "  FAIL cpu: {what}: {:.3} ms/call, {:.1}× the {CPU_TARGET_MS} ms target",
                row.cpu_ms_per_call,
                row.cpu_ms_per_call / CPU_TARGET_MS
            );
        }
        if !row.health_pass() {
            let p99 = ms(row.health_percentile(0.99));
            println!(
                "  FAIL health: {what}: p99 {p99:.2} ms ({:+.2} ms over {HEALTH_P99_TARGET_MS} ms), {} failed checks",
                p99 - HEALTH_P99_TARGET_MS,
                row.health_failures
            );
        }
        if row.rss_pass() == Some(false) {
            println!(
                "  FAIL rss: {what}: +{:.2} MB ({:+.2} MB over {RSS_GROWTH_TARGET_MB} MB)",
                row.rss_growth_mb(),
                row.rss_growth_mb() - RSS_GROWTH_TARGET_MB
            );
        }
        let unexpected: usize = row
            .answers
            .iter()
            .filter(|(code, _)| code.as_str() != row.expected)
            .map(|(_, count)| count)
            .sum();
        if unexpected > 0 {
            println!(
                "  note: {what}: {unexpected} answers other than {}",
                row.expected
            );
        }
    }
    let all = rows
        .iter()
        .all(|row| row.cpu_pass() && row.health_pass() && row.rss_pass() != Some(false));
    println!(
        "  {}",
        if all {
            "all targets met"
        } else {
            "see FAIL lines above"
        }
    );
}

fn verdict(pass: bool) -> &'static str {
    if pass { "pass" } else { "FAIL" }
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// The 1, 5 and 15 minute load averages (`/proc/loadavg`).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".to_owned())
}
