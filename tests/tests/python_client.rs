//! A Python client generated from `proto/` alone (grpcio + grpc_tools at
//! run time) drives the real services through the README walkthrough, rich
//! errors, RBAC and tenancy: the contract works for non-Rust users. A
//! second program decodes every rich error detail common.proto promises
//! with `grpc_status.rpc_status.from_call` and googleapis-common-protos
//! alone, and reflection describes those detail messages to grpcurl.
//!
//! Needs `python3` with grpcio, grpcio-tools, grpcio-status and
//! grpcio-health-checking; scripts/test installs them. Without them this
//! test fails (it never skips).

use std::process::Command;
use std::time::Duration;

use tests::auth;
use tests::stack::Stack;

const MODULES: &str = "import grpc, grpc_tools, grpc_status, grpc_health";
const PIP: &str = "python3 -m pip install grpcio grpcio-tools grpcio-status grpcio-health-checking";

/// How long the whole Python program may take (stub generation included).
const DEADLINE: Duration = Duration::from_secs(180);

/// How many checks workflow.py asserts: a count that falls short means a
/// step was skipped. Update it with the program.
const CHECKS: u32 = 44;

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
async fn python_client_runs_the_workflow_from_the_protos() {
    require_python_modules();

    let stack = Stack::start().await;
    let token = |role: &str| auth::token(&format!("python-{role}"), "acme", &[role]);
    let other_tenant = auth::token(
        "globex-all",
        "globex",
        &["viewer", "editor", "admin", "runtime"],
    );
    let manifest = env!("CARGO_MANIFEST_DIR");
    let script = format!("{manifest}/python/workflow.py");
    let proto_root = format!("{manifest}/../proto");

    let run = tokio::process::Command::new("python3")
        .arg(&script)
        .args(["--proto-root", &proto_root])
        .args(["--registry", &stack.registry.address])
        .args(["--admin-token", &token("admin")])
        .args(["--editor-token", &token("editor")])
        .args(["--viewer-token", &token("viewer")])
        .args(["--runtime-token", &token("runtime")])
        .args(["--other-tenant-token", &other_tenant])
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
    let last = stdout.lines().last().unwrap_or_default();
    assert_eq!(
        last,
        format!("python workflow: all {CHECKS} checks passed"),
        "unexpected final line of {script}:\n{report}"
    );

    let logs = stack.logs();
    stack.finish().await;
    assert!(
        !logs.contains("sk-python-client-key"),
        "the api key reached the services' logs:\n{logs}"
    );
}

/// How many checks error_details.py asserts; update it with the program.
const DETAIL_CHECKS: u32 = 75;

/// The googleapis messages reflection must describe, so grpcurl (and any
/// reflection client) decodes the details we send.
const DETAIL_MESSAGES: [&str; 8] = [
    "google.rpc.Status",
    "google.rpc.ErrorInfo",
    "google.rpc.BadRequest",
    "google.rpc.PreconditionFailure",
    "google.rpc.ResourceInfo",
    "google.rpc.RetryInfo",
    "google.rpc.QuotaFailure",
    "google.rpc.Code",
];

#[tokio::test]
async fn python_decodes_every_documented_error_detail_with_stock_packages() {
    require_python_modules();

    // A tenant call rate the script's own tenant stays inside (1,000 at
    // once, then one a minute) and another tenant's calls run past.
    let registry = Stack::default_registry()
        .env("REGISTRY_TENANT_CALLS_PER_MINUTE", "1")
        .env("REGISTRY_TENANT_CALL_BURST", "1000");
    let mut stack = Stack::start_with(registry).await;
    // UNAVAILABLE is provoked with crypto-service down; the other errors
    // need only the registry and its database.
    stack.stop_crypto().await;
    let token = |role: &str| auth::token(&format!("details-{role}"), "acme", &[role]);
    let manifest = env!("CARGO_MANIFEST_DIR");
    let script = format!("{manifest}/python/error_details.py");
    let proto_root = format!("{manifest}/../proto");

    let run = tokio::process::Command::new("python3")
        .arg(&script)
        .args(["--proto-root", &proto_root])
        .args(["--registry", &stack.registry.address])
        .args(["--admin-token", &token("admin")])
        .args(["--editor-token", &token("editor")])
        .args(["--viewer-token", &token("viewer")])
        .args([
            "--throttled-token",
            &auth::token("details-throttled", "throttled", &["viewer"]),
        ])
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
        format!("error details: all {DETAIL_CHECKS} checks passed"),
        "unexpected final line of {script}:\n{report}"
    );

    for message in DETAIL_MESSAGES {
        let described = tokio::process::Command::new("grpcurl")
            .args(["-plaintext", &stack.registry.address, "describe", message])
            .kill_on_drop(true)
            .output();
        let described = tokio::time::timeout(DEADLINE, described)
            .await
            .unwrap_or_else(|_| panic!("grpcurl describe {message} hung"))
            .expect("grpcurl runs (scripts/test installs it)");
        let text = String::from_utf8_lossy(&described.stdout);
        assert!(
            described.status.success() && text.contains(message),
            "reflection does not describe {message}:\n{text}\n{}",
            String::from_utf8_lossy(&described.stderr)
        );
    }
    stack.finish().await;
}
