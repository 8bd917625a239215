//! The README's shell examples, run exactly as written against real
//! services: a README that drifts from the product fails here.

use std::process::Command;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use tests::stack::Stack;
use tests::{Launch, auth, pki, start_crypto};

/// The ```sh block that follows `<!-- readme-test: NAME -->` in README.md.
fn readme_block(name: &str) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
    let readme = std::fs::read_to_string(path).expect("README.md");
    let marker = format!("<!-- readme-test: {name} -->");
    let after = readme
        .split_once(&marker)
        .unwrap_or_else(|| panic!("no {marker} in README.md"))
        .1;
    let body = after
        .split_once("```sh\n")
        .expect("a ```sh block after the marker")
        .1;
    body.split_once("\n```")
        .expect("the block ends")
        .0
        .to_owned()
}

/// Runs `script` with bash (errexit, pipefail) and `env`; returns stdout.
fn run(script: &str, env: &[(&str, String)]) -> String {
    let output = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "the README block failed:\n{}\n--- stdout\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test]
async fn readme_walkthrough_runs_as_written() {
    let stack = Stack::start().await;
    let token = |role: &str| auth::token(&format!("readme-{role}"), "dev", &[role]);
    let env = [
        ("REGISTRY", stack.registry.address.clone()),
        ("VIEWER_TOKEN", token("viewer")),
        ("EDITOR_TOKEN", token("editor")),
        ("ADMIN_TOKEN", token("admin")),
        ("RUNTIME_TOKEN", token("runtime")),
    ];
    let out = run(&readme_block("walkthrough"), &env);
    for expected in [
        r#""action": "VERSION_ACTION_UPDATE""#,
        r#""version": "4""#,
        r#""path": "max_iter""#,
        r#""path": "llm_overrides.max_tokens""#,
        r#""apiKey": "sk-example-key""#,
        r#""maxTokens": 1024"#,
        "agentregistry.v1.RuntimeService",
        "rpc ResolveAgent ( .agentregistry.v1.ResolveAgentRequest )",
        r#""status": "SERVING""#,
        r#""activeVersion": 1"#,
        r#""reason": "reviewed""#,
        r#""toVersion": "2""#,
        "production runs agent version 2",
        r#""action": "CREDENTIAL_RELEASE""#,
        r#""actor": "readme-runtime""#,
        r#""resource": "agents/"#,
        "attempt 1 answered version 5",
        "attempt 2 answered version 5",
        r#""validatedDiff""#,
    ] {
        assert!(
            out.contains(expected),
            "{expected} missing from the walkthrough output:\n{out}"
        );
    }
    assert_eq!(
        out.matches("sk-example-key").count(),
        1,
        "only ResolveAgent shows the key:\n{out}"
    );
    stack.finish().await;
}

#[tokio::test]
async fn readme_tls_examples_run_as_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = pki::Authority::new("readme-ca");
    let server = ca.loopback_server();
    let client = pki::Authority::new("readme-client-ca").client("readme.agentregistry.test");
    let file = |name: &str, text: &str| pki::write(dir.path(), name, text).display().to_string();
    let stack = Stack::start_with(
        Stack::default_registry()
            .env("REGISTRY_TLS_CERT_FILE", file("tls.crt", &server.cert_pem))
            .env("REGISTRY_TLS_KEY_FILE", file("tls.key", &server.key_pem)),
    )
    .await;
    let env = [
        ("REGISTRY", stack.registry.address.clone()),
        ("CA", file("ca.crt", &ca.cert_pem())),
        ("VIEWER_TOKEN", auth::token("readme", "dev", &["viewer"])),
        ("CLIENT_CERT", file("client.crt", &client.cert_pem)),
        ("CLIENT_KEY", file("client.key", &client.key_pem)),
    ];
    let out = run(&readme_block("tls"), &env);
    for expected in ["agentregistry.v1.AgentService", r#""status": "SERVING""#] {
        assert!(out.contains(expected), "{expected} missing:\n{out}");
    }
    stack.finish().await;
}

#[tokio::test]
async fn readme_crypto_examples_run_as_written() {
    let crypto =
        start_crypto(Launch::default().env("ENCRYPTION_KEY", STANDARD.encode([7u8; 32]))).await;
    let out = run(
        &readme_block("crypto"),
        &[("CRYPTO", crypto.address.clone())],
    );
    for expected in [
        "agentregistry.crypto.v1.CryptoService",
        "rpc Rewrap",
        "SERVING",
        r#""ciphertext": "arc1.1."#,
        "KEY_DERIVATION_DIRECT",
    ] {
        assert!(out.contains(expected), "{expected} missing:\n{out}");
    }
}

#[tokio::test]
async fn readme_error_details_run_as_written() {
    let stack = Stack::start().await;
    let env = [
        ("REGISTRY", stack.registry.address.clone()),
        (
            "VIEWER_TOKEN",
            auth::token("readme-viewer", "dev", &["viewer"]),
        ),
    ];
    let out = run(&readme_block("errors"), &env);
    for expected in [
        "PermissionDenied",
        "type.googleapis.com/google.rpc.ErrorInfo",
        r#""reason":"MISSING_ROLE""#,
        "NotFound",
        "type.googleapis.com/google.rpc.ResourceInfo",
        r#""resourceName":"01890a5d-ac96-774b-bcce-b302099a8057""#,
    ] {
        assert!(out.contains(expected), "{expected} missing:\n{out}");
    }
    stack.finish().await;
}
