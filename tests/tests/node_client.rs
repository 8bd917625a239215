//! A Node.js client (tests/node/workflow.js: @grpc/grpc-js and
//! @grpc/proto-loader over the `.proto` files, error details decoded with
//! google-proto-files and protobufjs) drives the real services through the
//! report's workflow: create provider, create agent, update, list
//! versions, diff, rollback, resolve as runtime; then refused calls and
//! their rich details, and proto-loader's snake_case pitfall.
//!
//! Needs `node` and tests/node's packages (`bash scripts/node-tools`;
//! scripts/test runs it). Without them this test fails (it never skips).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tests::auth;
use tests::stack::Stack;

/// How long the whole Node program may take.
const DEADLINE: Duration = Duration::from_secs(120);

/// How many checks workflow.js asserts: a count that falls short means a
/// step was skipped. Update it with the program.
const CHECKS: u32 = 41;

const PACKAGES: [&str; 4] = [
    "@grpc/grpc-js",
    "@grpc/proto-loader",
    "google-proto-files",
    "protobufjs",
];

fn require_node_packages(node_dir: &Path) {
    match Command::new("node").arg("--version").output() {
        Ok(output) if output.status.success() => {}
        _ => panic!("node does not run; install Node.js 18 or later"),
    }
    for package in PACKAGES {
        assert!(
            node_dir.join("node_modules").join(package).is_dir(),
            "{package} is not installed in {}: run `bash scripts/node-tools` \
             (scripts/test does)",
            node_dir.display()
        );
    }
}

#[tokio::test]
async fn node_client_runs_the_workflow_from_the_protos() {
    let manifest = env!("CARGO_MANIFEST_DIR");
    let node_dir = Path::new(manifest).join("node");
    require_node_packages(&node_dir);

    let stack = Stack::start().await;
    let token = |role: &str| auth::token(&format!("node-{role}"), "acme", &[role]);
    let script = node_dir.join("workflow.js");
    let proto_root = format!("{manifest}/../proto");

    let run = tokio::process::Command::new("node")
        .arg(&script)
        .args(["--proto-root", &proto_root])
        .args(["--registry", &stack.registry.address])
        .args(["--admin-token", &token("admin")])
        .args(["--editor-token", &token("editor")])
        .args(["--viewer-token", &token("viewer")])
        .args(["--runtime-token", &token("runtime")])
        .current_dir(&node_dir)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(DEADLINE, run)
        .await
        .unwrap_or_else(|_| panic!("{} did not finish within {DEADLINE:?}", script.display()))
        .expect("node runs");

    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let report = format!("--- stdout\n{stdout}\n--- stderr\n{stderr}");
    if !output.status.success() {
        panic!(
            "{} failed ({}):\n{report}\n--- service logs\n{}",
            script.display(),
            output.status,
            stack.logs()
        );
    }
    assert_eq!(
        stdout.lines().last().unwrap_or_default(),
        format!("node workflow: all {CHECKS} checks passed"),
        "unexpected final line of {}:\n{report}",
        script.display()
    );

    let logs = stack.logs();
    stack.finish().await;
    assert!(
        !logs.contains("sk-node-client-key"),
        "the api key reached the services' logs:\n{logs}"
    );
}
