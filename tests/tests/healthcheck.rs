//! `registry-service healthcheck` and `crypto-service healthcheck`, run as
//! processes the way a compose healthcheck runs them: with the same
//! settings as the server they check and no arguments of their own. They
//! exit 0 only while the server answers SERVING, and otherwise exit
//! non-zero with one line that says why.

use std::process::ExitStatus;

use tests::health::wait_for_status;
use tests::stack::{TestDatabase, crypto_on_socket, start_registry};
use tests::{Launch, Process, binary, pki, start_crypto};
use tonic_health::pb::health_check_response::ServingStatus;

/// Runs `binary healthcheck` with exactly `env` (and `args` after it).
async fn healthcheck(
    binary_name: &str,
    env: &[(&str, &str)],
    args: &[&str],
) -> (ExitStatus, String) {
    let launch = env
        .iter()
        .fold(
            Launch::default().arg("healthcheck"),
            |launch, (name, value)| launch.env(*name, *value),
        )
        .args(args.iter().copied());
    Process::run_to_exit(&binary(binary_name), launch).await
}

/// The one line a failed check prints.
fn one_line(printed: &str) -> &str {
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(lines.len(), 1, "want one line, got: {printed:?}");
    lines[0]
}

#[tokio::test]
async fn the_registry_healthcheck_passes_only_while_its_health_port_answers_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("crypto.sock");
    let crypto = start_crypto(crypto_on_socket(&socket)).await;
    let database = TestDatabase::fresh().await;
    let registry = start_registry(
        &database,
        &format!("unix:{}", socket.display()),
        tests::stack::Stack::default_registry()
            .env("REGISTRY_HEALTH_LISTEN", "127.0.0.1:0")
            .env("REGISTRY_HEALTH_INTERVAL_SECONDS", "1"),
    )
    .await;
    registry
        .wait_for_log("registry-service health serving", 1)
        .await;
    let health = registry
        .log_field("registry-service health serving", "listen")
        .expect("the health port's address in its log line");
    let health_channel = tonic::transport::Endpoint::from_shared(format!("http://{health}"))
        .expect("a URL")
        .connect()
        .await
        .expect("connects to the health port");
    wait_for_status(health_channel.clone(), "", ServingStatus::Serving).await;

    // Serving: exit 0, with the environment `serve` reads.
    let (status, printed) = healthcheck(
        "registry-service",
        &[("REGISTRY_HEALTH_LISTEN", &health)],
        &[],
    )
    .await;
    assert!(
        status.success(),
        "healthcheck failed while serving: {printed}"
    );
    // Run every few seconds by compose, which keeps what it prints: no
    // log lines, nothing at all when it passes.
    assert_eq!(printed, "", "a passing check prints nothing");
    let (status, printed) = healthcheck(
        "registry-service",
        &[("REGISTRY_HEALTH_LISTEN", &health)],
        &["--service", "liveness"],
    )
    .await;
    assert!(
        status.success(),
        "liveness check failed while serving: {printed}"
    );

    // A service name the server does not know is not SERVING.
    let (status, printed) = healthcheck(
        "registry-service",
        &[("REGISTRY_HEALTH_LISTEN", &health)],
        &["--service", "no.such.Service"],
    )
    .await;
    assert!(!status.success(), "an unknown service passed: {printed}");
    assert!(one_line(&printed).contains("no.such.Service"), "{printed}");

    // crypto-service gone: readiness turns NOT_SERVING, the check fails
    // and says so (liveness still passes: the process runs).
    crypto.terminate().await;
    wait_for_status(health_channel, "", ServingStatus::NotServing).await;
    let (status, printed) = healthcheck(
        "registry-service",
        &[("REGISTRY_HEALTH_LISTEN", &health)],
        &[],
    )
    .await;
    assert!(
        !status.success(),
        "healthcheck passed while NOT_SERVING: {printed}"
    );
    let line = one_line(&printed);
    assert!(
        line.contains("NOT_SERVING") && line.contains(&health),
        "the line names the endpoint and the status: {line}"
    );
    let (status, printed) = healthcheck(
        "registry-service",
        &[("REGISTRY_HEALTH_LISTEN", &health)],
        &["--service", "liveness"],
    )
    .await;
    assert!(
        status.success(),
        "liveness failed while the process runs: {printed}"
    );

    // Nothing listening any more: non-zero, and says it cannot connect.
    registry.terminate().await;
    let (status, printed) = healthcheck(
        "registry-service",
        &[("REGISTRY_HEALTH_LISTEN", &health)],
        &[],
    )
    .await;
    assert!(
        !status.success(),
        "healthcheck passed with nothing listening: {printed}"
    );
    assert!(one_line(&printed).contains("cannot connect"), "{printed}");
    database.drop_database().await;
}

#[tokio::test]
async fn the_registry_healthcheck_needs_a_plaintext_port_when_its_grpc_port_is_tls() {
    let (status, printed) = healthcheck(
        "registry-service",
        &[
            ("REGISTRY_LISTEN", "0.0.0.0:50051"),
            ("REGISTRY_TLS_CERT_FILE", "/nonexistent/tls.crt"),
        ],
        &[],
    )
    .await;
    assert!(!status.success(), "{printed}");
    assert!(
        one_line(&printed).contains("REGISTRY_HEALTH_LISTEN"),
        "{printed}"
    );
}

#[tokio::test]
async fn the_crypto_healthcheck_checks_its_tcp_port_or_unix_socket() {
    // TCP.
    let crypto = start_crypto(Launch::default().env("CRYPTO_DEV", "true")).await;
    let address = crypto.address.clone();
    let (status, printed) =
        healthcheck("crypto-service", &[("CRYPTO_LISTEN", &address)], &[]).await;
    assert!(
        status.success(),
        "healthcheck failed while serving: {printed}"
    );
    crypto.terminate().await;
    let (status, printed) =
        healthcheck("crypto-service", &[("CRYPTO_LISTEN", &address)], &[]).await;
    assert!(
        !status.success(),
        "healthcheck passed with nothing listening: {printed}"
    );
    let line = one_line(&printed);
    assert!(
        line.contains("cannot connect") && line.contains(&address),
        "{line}"
    );

    // A unix socket, as in compose.
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("crypto.sock");
    let listen = format!("unix:{}", socket.display());
    let crypto = start_crypto(crypto_on_socket(&socket)).await;
    let (status, printed) = healthcheck("crypto-service", &[("CRYPTO_LISTEN", &listen)], &[]).await;
    assert!(
        status.success(),
        "healthcheck over the socket failed: {printed}"
    );
    crypto.terminate().await;
    let (status, printed) = healthcheck("crypto-service", &[("CRYPTO_LISTEN", &listen)], &[]).await;
    assert!(
        !status.success(),
        "healthcheck passed with no server on the socket: {printed}"
    );
    assert!(one_line(&printed).contains("cannot connect"), "{printed}");
}

#[tokio::test]
async fn the_crypto_healthcheck_speaks_mutual_tls_with_its_own_client_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = pki::Authority::new("agentregistry healthcheck CA");
    let server = ca.server("crypto.test");
    let checker = ca.client("healthcheck.test");
    let stranger = pki::Authority::new("another CA").client("healthcheck.test");
    let file =
        |name: &str, contents: &str| pki::write(dir.path(), name, contents).display().to_string();
    let server_settings = [
        ("CRYPTO_TLS_CERT_FILE", file("server.pem", &server.cert_pem)),
        ("CRYPTO_TLS_KEY_FILE", file("server.key", &server.key_pem)),
        ("CRYPTO_TLS_CLIENT_CA_FILE", file("ca.pem", &ca.cert_pem())),
        // The registry's name: the checker is not among the callers, and
        // needs not be (health is open to any client the CA vouches for).
        ("CRYPTO_REGISTRY_CLIENTS", "dns:registry.test".to_owned()),
    ];
    let launch = server_settings.iter().fold(
        Launch::default().env("CRYPTO_DEV", "true"),
        |launch, (name, value)| launch.env(*name, value),
    );
    let crypto = start_crypto(launch).await;
    let listen = crypto.address.clone();
    let mut env: Vec<(&str, String)> = server_settings.to_vec();
    env.push(("CRYPTO_LISTEN", listen.clone()));
    let with = |extra: &[(&'static str, String)]| {
        let mut all = env.clone();
        all.extend_from_slice(extra);
        all
    };
    let run = async |settings: Vec<(&str, String)>| {
        let pairs: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
        healthcheck("crypto-service", &pairs, &[]).await
    };

    // The check's own TLS settings are required, and named.
    let (status, printed) = run(env.clone()).await;
    assert!(!status.success(), "{printed}");
    assert!(
        one_line(&printed).contains("CRYPTO_HEALTHCHECK_CA_FILE"),
        "{printed}"
    );

    let ca_file = (
        "CRYPTO_HEALTHCHECK_CA_FILE",
        file("check-ca.pem", &ca.cert_pem()),
    );
    let name = ("CRYPTO_HEALTHCHECK_SERVER_NAME", "crypto.test".to_owned());
    let (status, printed) = run(with(&[
        ca_file.clone(),
        name.clone(),
        (
            "CRYPTO_HEALTHCHECK_CERT_FILE",
            file("check.pem", &checker.cert_pem),
        ),
        (
            "CRYPTO_HEALTHCHECK_KEY_FILE",
            file("check.key", &checker.key_pem),
        ),
    ]))
    .await;
    assert!(
        status.success(),
        "healthcheck over mutual TLS failed: {printed}"
    );

    // A client certificate the server's client CA did not sign is refused.
    let (status, printed) = run(with(&[
        ca_file,
        name,
        (
            "CRYPTO_HEALTHCHECK_CERT_FILE",
            file("stranger.pem", &stranger.cert_pem),
        ),
        (
            "CRYPTO_HEALTHCHECK_KEY_FILE",
            file("stranger.key", &stranger.key_pem),
        ),
    ]))
    .await;
    assert!(
        !status.success(),
        "a foreign client certificate passed: {printed}"
    );
    assert!(one_line(&printed).contains(&listen), "{printed}");
    crypto.terminate().await;
}
