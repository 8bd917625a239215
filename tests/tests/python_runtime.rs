//! The Python runtime loop (`tests/python/agentregistry_runtime.py`, driven
//! by `runtime_loop.py`) against the real services: it resolves by label,
//! keeps a local cache that WatchChanges keeps true, re-resolves with the
//! etag, resumes a dropped stream without missing a change, and starts
//! over from now when its revision was compacted away. Here, on
//! top of the program's own checks: crypto-service decrypted exactly once
//! per full answer (a `not_modified` re-resolve costs no decrypt, by
//! crypto-service's own metrics), and no key reached the program's output
//! or the services' logs. SQLite, or PostgreSQL with `TEST_POSTGRES_URL`.
//!
//! Needs `python3` with grpcio and grpcio-tools (scripts/test installs
//! them); without them this test fails (it never skips).

use std::process::Command;
use std::time::Duration;

use tests::stack::Stack;
use tests::{Launch, auth, http_get};

const MODULES: &str = "import grpc, grpc_tools, grpc_status, grpc_health";
const PIP: &str = "python3 -m pip install grpcio grpcio-tools grpcio-status grpcio-health-checking";

/// How long the whole Python program may take (stub generation included).
const DEADLINE: Duration = Duration::from_secs(180);

/// How many checks runtime_loop.py asserts: a count that falls short means
/// a step was skipped. Update it with the program.
const CHECKS: u32 = 55;

/// The full ResolveAgent answers the program's steps need (first get, two
/// label moves, one new key, the re-resolve after OUT_OF_RANGE), hence the
/// Decrypts crypto-service answers.
const FULL_ANSWERS: u64 = 5;

/// The keys the program stores; neither may appear in any output.
const KEYS: [&str; 2] = ["sk-runtime-loop-first", "sk-runtime-loop-second"];

/// Decrypts crypto-service has answered, from its `/metrics`.
async fn decrypts(metrics: &str) -> u64 {
    let body = http_get(metrics, "/metrics").await;
    let series = r#"grpc_server_handled_total{grpc_type="unary",grpc_service="agentregistry.crypto.v1.CryptoService",grpc_method="Decrypt",grpc_code="OK"}"#;
    tests::metric_value(&body, series)
}

fn require_python_modules() {
    let output = Command::new("python3").args(["-c", MODULES]).output();
    match output {
        Ok(output) if output.status.success() => {}
        Ok(output) => panic!(
            "python3 lacks the gRPC client packages (`{MODULES}` failed):\n{}\n\
             install them with `{PIP}` (scripts/test does)",
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(error) => panic!("python3 does not run ({error}); install Python 3, then `{PIP}`"),
    }
}

#[tokio::test]
async fn python_runtime_follows_labels_keys_and_reconnects_from_its_cache() {
    require_python_modules();

    // The key canary is checked (a Decrypt) only an hour after start, so
    // every Decrypt counted is a ResolveAgent's. The change log keeps the
    // two newest revisions, compacted every second: the program's resume
    // after a compacted revision meets OUT_OF_RANGE.
    let crypto = Launch::default().arg("--metrics-listen").arg("127.0.0.1:0");
    let registry = Stack::default_registry()
        .env("REGISTRY_HEALTH_INTERVAL_SECONDS", "3600")
        .env("REGISTRY_WATCH_HISTORY", "2")
        .env("REGISTRY_WATCH_COMPACTION_SECONDS", "1");
    let stack = Stack::launch(crypto, registry).await;
    let metrics = stack
        .crypto
        .as_ref()
        .and_then(|crypto| crypto.log_field("metrics serving", "listen"))
        .expect("crypto metrics address");
    assert_eq!(decrypts(&metrics).await, 0, "no Decrypt before the program");

    let token = |role: &str| auth::token(&format!("pyruntime-{role}"), "acme", &[role]);
    let manifest = env!("CARGO_MANIFEST_DIR");
    let script = format!("{manifest}/python/runtime_loop.py");
    let proto_root = format!("{manifest}/../proto");

    let run = tokio::process::Command::new("python3")
        .arg(&script)
        .args(["--proto-root", &proto_root])
        .args(["--registry", &stack.registry.address])
        .args(["--admin-token", &token("admin")])
        .args(["--runtime-token", &token("runtime")])
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(DEADLINE, run)
        .await
        .unwrap_or_else(|_| panic!("{script} did not finish within {DEADLINE:?}"))
        .expect("python3 runs");

    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let report = format!("--- stdout\n{stdout}\n--- stderr\n{stderr}");
    if !output.status.success() {
        panic!(
            "{script} failed ({}):\n{report}\n--- service logs\n{}",
            output.status,
            stack.logs()
        );
    }
    assert_eq!(
        stdout.lines().last().unwrap_or_default(),
        format!("python runtime: all {CHECKS} checks passed"),
        "unexpected final line of {script}:\n{report}"
    );
    assert_eq!(
        decrypts(&metrics).await,
        FULL_ANSWERS,
        "one Decrypt per full answer, none for not_modified"
    );

    let logs = stack.logs();
    stack.finish().await;
    for key in KEYS {
        assert!(
            !stdout.contains(key) && !stderr.contains(key),
            "the program printed an api key:\n{report}"
        );
        assert!(!logs.contains(key), "an api key reached the services' logs");
    }
}
