//! `bench`: measurements, not tests. Starts the release binaries on
//! loopback, drives them over gRPC, and prints throughput, latency
//! percentiles and the server's CPU time per call (from /proc).
//!
//! Run: `cargo build --release --workspace --bins`, then from the target
//! directory `release/bench crypto`, `release/bench registry`,
//! `release/bench versions`, `release/bench compare`, `release/bench soak`,
//! `release/bench abuse`, `release/bench resolve`, `release/bench watch` or
//! `release/bench filter` (see BENCHMARKS.md).

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use crypto_service::keyring::{KeyMaterial, Keyring};
use proto::crypto::crypto_service_client::CryptoServiceClient;
use proto::crypto::{DecryptRequest, EncryptRequest};
use tests::{Launch, start_crypto};
use tonic::transport::Channel;

mod abuse;
mod compare;
mod filter;
mod pair;
mod registry;
mod resolve;
mod rewrap;
mod soak;
mod stats;
mod versions;
mod watch;

use stats::{Phase, cpu_seconds, percentile};

#[derive(Debug, Parser)]
#[command(name = "bench", about = "agentregistry measurements")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// crypto-service: in-process AES-GCM cost, then Encrypt and Decrypt
    /// over gRPC on loopback at each concurrency.
    Crypto {
        /// Concurrency levels (in-flight calls).
        #[arg(long, value_delimiter = ',', default_value = "1,32")]
        concurrency: Vec<usize>,
        /// Calls per phase at concurrency 1; higher levels make 10× as many.
        #[arg(long, default_value_t = 20_000)]
        calls: usize,
        /// Client connections shared by the in-flight calls.
        #[arg(long, default_value_t = 4)]
        connections: usize,
    },
    /// Rewrap throughput: stored credentials moved to a new key version per
    /// second (SQLite).
    Rewrap {
        /// Stored values (half provider rows, half version snapshots).
        #[arg(long, default_value_t = 100_000)]
        values: u64,
        /// Values per Rewrap call.
        #[arg(long, default_value_t = 500)]
        batch: u64,
    },
    /// registry-service + crypto-service: the workload of the Python peer's
    /// measure.py (same phases, counts and concurrency) over gRPC.
    Registry(registry::RegistryArgs),
    /// ListAgentVersions latency with a short and a very long history.
    Versions(versions::VersionsArgs),
    /// Minutes of a mixed read/write workload at high concurrency: every
    /// error but a stale etag's ABORTED fails the run; reports latency per
    /// call and the services' memory at start and end.
    Soak(soak::SoakArgs),
    /// Issue 15's attacks at the message-size limit: server CPU per
    /// request, Health/Check latency meanwhile, RSS and `/metrics` size.
    Abuse(abuse::AbuseArgs),
    /// ResolveAgent: a full resolution against a `not_modified`
    /// re-resolution with the last answer's etag, alternating rounds.
    Resolve(resolve::ResolveArgs),
    /// ListAgents with filters and orders over 100,000 agents of one
    /// tenant (first-page latency), and the write cost of `agent_tools`.
    Filter(filter::FilterArgs),
    /// WatchChanges: change-to-event latency of many concurrent streams
    /// under a steady rate of writes (through a second replica on
    /// PostgreSQL), every change checked once and in order, and the
    /// registry's memory and CPU per idle stream.
    Watch(watch::WatchArgs),
    /// Side-by-side table of `bench registry` runs and the peer's
    /// measure.py runs (median run of each side).
    Compare(compare::CompareArgs),
}

#[tokio::main]
async fn main() {
    match Args::parse().command {
        Command::Crypto {
            concurrency,
            calls,
            connections,
        } => crypto(&concurrency, calls, connections).await,
        Command::Rewrap { values, batch } => rewrap::run(values, batch).await,
        Command::Registry(args) => registry::run(args).await,
        Command::Versions(args) => versions::run(args).await,
        Command::Compare(args) => compare::run(&args),
        Command::Soak(args) => soak::run(args).await,
        Command::Abuse(args) => abuse::run(args).await,
        Command::Resolve(args) => resolve::run(args).await,
        Command::Filter(args) => filter::run(args).await,
        Command::Watch(args) => watch::run(args).await,
    }
}

const SECRET_64: &[u8; 64] = b"sk-proj-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRST";
const AAD: &[u8] = b"tenant:00000000-0000-0000-0000-000000000001/provider:0195f3/api_key";

async fn crypto(levels: &[usize], calls: usize, connections: usize) {
    in_process_aes_gcm();

    let service = start_crypto(Launch::default().env(
        "ENCRYPTION_KEY",
        "ERERERERERERERERERERERERERERERERERERERERERE=",
    ))
    .await;
    let pid = service.pid();
    let mut pool = Vec::new();
    for _ in 0..connections.max(1) {
        pool.push(CryptoServiceClient::new(service.channel().await));
    }
    let sample = pool[0]
        .clone()
        .encrypt(EncryptRequest {
            plaintext: SECRET_64.to_vec(),
            associated_data: AAD.to_vec(),
        })
        .await
        .expect("warm-up encrypt")
        .into_inner()
        .ciphertext;

    println!("\ncrypto-service over gRPC (loopback, plaintext h2, {connections} connections)");
    println!("{}", Phase::header());
    for &level in levels {
        let total = if level == 1 { calls } else { calls * 10 };
        let encrypt = run_phase(
            "Encrypt",
            pid,
            &pool,
            level,
            total,
            |mut client| async move {
                client
                    .encrypt(EncryptRequest {
                        plaintext: SECRET_64.to_vec(),
                        associated_data: AAD.to_vec(),
                    })
                    .await
                    .map(|_| ())
            },
        )
        .await;
        println!("{}", encrypt.row());
        let ciphertext = Arc::new(sample.clone());
        let decrypt = run_phase("Decrypt", pid, &pool, level, total, move |mut client| {
            let ciphertext = Arc::clone(&ciphertext);
            async move {
                client
                    .decrypt(DecryptRequest {
                        ciphertext: ciphertext.to_string(),
                        associated_data: AAD.to_vec(),
                    })
                    .await
                    .map(|_| ())
            }
        })
        .await;
        println!("{}", decrypt.row());
    }
}

/// Median of five runs of 200,000 encryptions and decryptions in process.
fn in_process_aes_gcm() {
    let key = zeroize_key([0x11; 32]);
    let ring = Keyring::new(vec![(1, key)], "bench").expect("keyring");
    let sealed = ring.encrypt(SECRET_64, AAD).expect("encrypt").ciphertext;
    let per_op = |op: &dyn Fn()| {
        let mut runs: Vec<f64> = (0..5)
            .map(|_| {
                let start = Instant::now();
                for _ in 0..200_000 {
                    op();
                }
                start.elapsed().as_secs_f64() * 1e9 / 200_000.0
            })
            .collect();
        runs.sort_by(f64::total_cmp);
        runs[2]
    };
    let encrypt_ns = per_op(&|| {
        std::hint::black_box(ring.encrypt(std::hint::black_box(SECRET_64), AAD).ok());
    });
    let decrypt_ns = per_op(&|| {
        std::hint::black_box(ring.decrypt(std::hint::black_box(&sealed), AAD, "c").ok());
    });
    println!(
        "in-process AES-256-GCM, 64-byte secret, {}-byte AAD (median of 5 × 200,000)",
        AAD.len()
    );
    println!("  encrypt (nonce from the OS RNG, format string): {encrypt_ns:.0} ns/op");
    println!("  decrypt (parse, verify tag):                    {decrypt_ns:.0} ns/op");
}

fn zeroize_key(bytes: [u8; 32]) -> KeyMaterial {
    KeyMaterial::Direct(zeroize::Zeroizing::new(bytes))
}

/// Runs `total` calls with `level` in flight, spread over the pool.
async fn run_phase<F, Fut>(
    name: &'static str,
    server_pid: u32,
    pool: &[CryptoServiceClient<Channel>],
    level: usize,
    total: usize,
    call: F,
) -> Phase
where
    F: Fn(CryptoServiceClient<Channel>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), tonic::Status>> + Send,
{
    let cpu_before = cpu_seconds(server_pid);
    let start = Instant::now();
    let per_worker = total / level;
    let mut workers = Vec::new();
    for worker in 0..level {
        let client = pool[worker % pool.len()].clone();
        let call = call.clone();
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_worker);
            for _ in 0..per_worker {
                let began = Instant::now();
                call(client.clone()).await.expect("call succeeds");
                latencies.push(began.elapsed());
            }
            latencies
        }));
    }
    let mut latencies: Vec<Duration> = Vec::with_capacity(total);
    for worker in workers {
        latencies.extend(worker.await.expect("worker"));
    }
    let elapsed = start.elapsed();
    let cpu = cpu_seconds(server_pid) - cpu_before;
    latencies.sort();
    Phase {
        name,
        concurrency: level,
        calls: latencies.len(),
        ops_per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        server_cpu_us_per_call: cpu * 1e6 / latencies.len() as f64,
    }
}
