//! The registry's transport end to end: TLS on its gRPC listener (the real
//! grpcurl with -cacert, a Python grpcio client with
//! ssl_channel_credentials, tonic), client certificates when a client CA is
//! configured, a certificate replaced while serving (file change and
//! SIGHUP), the plaintext health-only port, and the refusal of plaintext
//! on a non-loopback address.

use std::path::{Path, PathBuf};
use std::time::Duration;

use proto::v1 as pb;
use tests::auth::{self, Bearer, authed};
use tests::health::{check, wait_for_status};
use tests::pki::{self, Authority, Issued};
use tests::stack::{Stack, TestDatabase};
use tests::{Launch, Process, binary};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::health_check_response::ServingStatus;

/// How long grpcurl or the Python client may take.
const CLIENT_DEADLINE: Duration = Duration::from_secs(120);

/// A CA, and the server certificate and key files the registry reads.
struct ServerFiles {
    dir: tempfile::TempDir,
    ca: Authority,
    cert: PathBuf,
    key: PathBuf,
}

impl ServerFiles {
    fn new(name: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Authority::new(name);
        let issued = ca.loopback_server();
        let cert = pki::write(dir.path(), "server.pem", &issued.cert_pem);
        let key = pki::write(dir.path(), "server.key", &issued.key_pem);
        Self { dir, ca, cert, key }
    }

    /// `ca`'s certificate written to a file, for grpcurl and Python.
    fn ca_file(&self, ca: &Authority, name: &str) -> PathBuf {
        pki::write(self.dir.path(), name, &ca.cert_pem())
    }

    /// Replaces the server certificate and key with `issued`, each file by
    /// a rename (as a Secret volume or cert-manager does): the key first,
    /// so a reader may briefly see a key that does not match.
    fn replace(&self, issued: &Issued) {
        replace_file(&self.key, &issued.key_pem);
        replace_file(&self.cert, &issued.cert_pem);
    }

    /// The registry settings serving TLS from these files.
    fn launch(&self) -> Launch {
        Stack::default_registry()
            .env("REGISTRY_TLS_CERT_FILE", self.cert.display().to_string())
            .env("REGISTRY_TLS_KEY_FILE", self.key.display().to_string())
    }
}

fn replace_file(path: &Path, contents: &str) {
    let fresh = path.with_extension("new");
    std::fs::write(&fresh, contents).expect("write");
    std::fs::rename(&fresh, path).expect("rename");
}

/// A TLS channel to `address` trusting only `ca`, with a client
/// certificate when given.
async fn tls_channel(
    address: &str,
    ca: &Authority,
    client: Option<&Issued>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.cert_pem()))
        .domain_name("localhost");
    if let Some(issued) = client {
        tls = tls.identity(Identity::from_pem(&issued.cert_pem, &issued.key_pem));
    }
    Endpoint::from_shared(format!("https://{address}"))
        .expect("url")
        .connect_timeout(Duration::from_secs(10))
        .tls_config(tls)?
        .connect()
        .await
}

/// ListAgents with a viewer token on `channel`.
async fn list_agents(channel: Channel) -> Result<pb::ListAgentsResponse, tonic::Status> {
    let token = auth::token("tls", "acme", &["viewer"]);
    pb::agent_service_client::AgentServiceClient::new(authed(channel, Bearer::new(&token)))
        .list_agents(pb::ListAgentsRequest::default())
        .await
        .map(tonic::Response::into_inner)
}

/// Whether a new TLS connection trusting only `ca` can list agents.
async fn lists_over_tls(address: &str, ca: &Authority, client: Option<&Issued>) -> bool {
    match tls_channel(address, ca, client).await {
        Ok(channel) => list_agents(channel).await.is_ok(),
        Err(_) => false,
    }
}

/// Runs grpcurl with `args`; its exit status and everything it printed.
async fn grpcurl(args: &[&str]) -> (bool, String) {
    let run = tokio::process::Command::new("grpcurl")
        .args(args)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(CLIENT_DEADLINE, run)
        .await
        .expect("grpcurl finishes")
        .expect("grpcurl runs (scripts/test installs it)");
    let mut printed = String::from_utf8_lossy(&output.stdout).into_owned();
    printed.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status.success(), printed)
}

/// Runs tests/python/tls_client.py with `args`; what it printed.
async fn python_tls_client(args: &[&str]) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/tls_client.py");
    let run = tokio::process::Command::new("python3")
        .arg(script)
        .args(args)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(CLIENT_DEADLINE, run)
        .await
        .expect("the Python client finishes")
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{script} failed (python3 needs grpcio and grpcio-health-checking; scripts/test \
         installs them):\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// A plaintext HTTP/2 client calling Health/Check at `address`.
async fn plaintext_health(address: &str) -> Result<ServingStatus, String> {
    let channel = Endpoint::from_shared(format!("http://{address}"))
        .expect("url")
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: "liveness".to_owned(),
        })
        .await
        .map(|reply| reply.into_inner().status())
        .map_err(|status| format!("{:?}: {}", status.code(), status.message()))
}

#[tokio::test]
async fn grpcurl_python_and_tonic_reach_the_registry_over_tls_and_plaintext_does_not() {
    let files = ServerFiles::new("registry-tls-ca");
    let stack = Stack::start_with(files.launch()).await;
    let address = stack.registry.address.clone();
    let ca_file = files.ca_file(&files.ca, "ca.pem");
    let ca = ca_file.display().to_string();
    let token = auth::token("grpcurl", "acme", &["viewer"]);
    let bearer = format!("authorization: Bearer {token}");

    // grpcurl, trusting the CA with -cacert: reflection, health, a call.
    let (ok, listed) = grpcurl(&["-cacert", &ca, &address, "list"]).await;
    assert!(ok, "grpcurl -cacert list failed:\n{listed}");
    assert!(listed.contains("agentregistry.v1.AgentService"), "{listed}");
    let (ok, health) = grpcurl(&["-cacert", &ca, &address, "grpc.health.v1.Health/Check"]).await;
    assert!(ok && health.contains("SERVING"), "{health}");
    let (ok, agents) = grpcurl(&[
        "-cacert",
        &ca,
        "-H",
        &bearer,
        &address,
        "agentregistry.v1.AgentService/ListAgents",
    ])
    .await;
    assert!(ok, "grpcurl ListAgents over TLS failed:\n{agents}");

    // Without the CA (system roots) or in plaintext, grpcurl gets nowhere.
    let (ok, untrusted) = grpcurl(&[&address, "list"]).await;
    assert!(
        !ok,
        "a server certificate from a private CA was trusted:\n{untrusted}"
    );
    assert!(untrusted.contains("certificate"), "{untrusted}");
    let (ok, plain) = grpcurl(&["-plaintext", &address, "list"]).await;
    assert!(!ok, "grpcurl -plaintext reached the TLS listener:\n{plain}");

    // Python grpcio with ssl_channel_credentials.
    let python = python_tls_client(&["--registry", &address, "--ca", &ca, "--token", &token]).await;
    for expected in [
        "health SERVING",
        "list agents OK",
        "list agents without a token UNAUTHENTICATED",
    ] {
        assert!(python.contains(expected), "{expected} missing:\n{python}");
    }

    // tonic over TLS; a plaintext tonic client fails.
    assert!(lists_over_tls(&address, &files.ca, None).await);
    let plaintext = plaintext_health(&address).await;
    assert!(
        plaintext.is_err(),
        "a plaintext client was answered on the TLS port: {plaintext:?}"
    );
    let logs = stack.finish().await;
    assert!(!logs.contains("panicked"), "{logs}");
}

#[tokio::test]
async fn the_health_port_answers_in_plaintext_with_the_registry_statuses_and_nothing_else() {
    let files = ServerFiles::new("registry-health-ca");
    let stack = Stack::start_with(files.launch().arg("--health-listen").arg("127.0.0.1:0")).await;
    let health = stack
        .registry
        .log_field("registry-service health serving", "listen")
        .expect("the health listener's address in the log");
    assert_ne!(health, stack.registry.address);

    assert_eq!(plaintext_health(&health).await, Ok(ServingStatus::Serving));
    let plain = Endpoint::from_shared(format!("http://{health}"))
        .expect("url")
        .connect()
        .await
        .expect("connects without TLS");
    // Readiness there is the registry's own: it turns SERVING once the
    // dependencies are checked, as it does on the TLS port.
    wait_for_status(plain.clone(), "", ServingStatus::Serving).await;
    let tls = tls_channel(&stack.registry.address, &files.ca, None)
        .await
        .expect("TLS connects");
    for service in ["", "liveness", "agentregistry.v1.AgentService"] {
        assert_eq!(
            check(plain.clone(), service).await,
            check(tls.clone(), service).await,
            "{service:?}"
        );
    }

    // Only health is served there: no registry method, no reflection, even
    // with a valid token.
    let refused = list_agents(plain.clone())
        .await
        .expect_err("ListAgents on the health port");
    assert_eq!(refused.code(), Code::Unimplemented, "{refused:?}");
    let reflection = tests::raw::unary(
        plain,
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        tonic::Request::new(Vec::new()),
    )
    .await
    .expect_err("reflection on the health port");
    assert_eq!(reflection.code(), Code::Unimplemented, "{reflection:?}");
    stack.finish().await;
}

#[tokio::test]
async fn a_certificate_replaced_on_disk_reaches_new_connections_without_a_restart() {
    let files = ServerFiles::new("first-ca");
    let stack = Stack::start_with(files.launch().arg("--tls-reload-seconds").arg("1")).await;
    let address = stack.registry.address.clone();
    let pid = stack.registry.pid();

    // A connection made now, kept open across the reload.
    let established = tls_channel(&address, &files.ca, None)
        .await
        .expect("TLS connects");
    list_agents(established.clone())
        .await
        .expect("a call on the first connection");

    let second = Authority::new("second-ca");
    files.replace(&second.loopback_server());
    stack
        .registry
        .wait_for_log("TLS certificate reloaded", 1)
        .await;

    assert!(
        lists_over_tls(&address, &second, None).await,
        "a new connection did not get the new certificate"
    );
    assert!(
        !lists_over_tls(&address, &files.ca, None).await,
        "a new connection still got the old certificate"
    );
    list_agents(established)
        .await
        .expect("the connection made before the reload keeps working");
    assert_eq!(stack.registry.pid(), pid, "no restart");

    // The same files again: nothing to reload.
    assert_eq!(stack.registry.log_lines("TLS certificate reloaded"), 1);
    let second_ca = files.ca_file(&second, "second-ca.pem");
    let (ok, listed) = grpcurl(&[
        "-cacert",
        &second_ca.display().to_string(),
        &address,
        "list",
    ])
    .await;
    assert!(ok, "grpcurl with the new CA:\n{listed}");
    stack.finish().await;
}

#[tokio::test]
async fn sighup_reloads_the_certificate_and_a_broken_one_is_not_taken() {
    let files = ServerFiles::new("first-ca");
    // No polling: only SIGHUP reloads.
    let stack = Stack::start_with(files.launch().arg("--tls-reload-seconds").arg("0")).await;
    let address = stack.registry.address.clone();

    // Broken files and a SIGHUP: refused, the certificate in use stays.
    replace_file(&files.cert, "not a certificate");
    stack.registry.signal("HUP");
    stack
        .registry
        .wait_for_log(
            "TLS certificate reload failed; new connections keep the current one",
            1,
        )
        .await;
    assert!(lists_over_tls(&address, &files.ca, None).await);

    // New files: unseen until the SIGHUP.
    let second = Authority::new("second-ca");
    files.replace(&second.loopback_server());
    assert!(
        lists_over_tls(&address, &files.ca, None).await,
        "without SIGHUP (and no polling) the old certificate stays"
    );
    stack.registry.signal("HUP");
    stack
        .registry
        .wait_for_log("TLS certificate reloaded", 1)
        .await;
    assert_eq!(
        stack
            .registry
            .log_field("TLS certificate reloaded", "trigger")
            .as_deref(),
        Some("SIGHUP")
    );
    assert!(lists_over_tls(&address, &second, None).await);
    assert!(!lists_over_tls(&address, &files.ca, None).await);
    // SIGHUP did not end the process: SIGTERM still finds it and it drains.
    let logs = stack.finish().await;
    assert!(logs.contains("registry-service stopped"), "{logs}");
}

#[tokio::test]
async fn with_a_client_ca_every_client_must_present_a_certificate_it_signed() {
    let files = ServerFiles::new("server-ca");
    let clients = Authority::new("client-ca");
    let client_ca = files.ca_file(&clients, "client-ca.pem");
    let stack = Stack::start_with(files.launch().env(
        "REGISTRY_TLS_CLIENT_CA_FILE",
        client_ca.display().to_string(),
    ))
    .await;
    let address = stack.registry.address.clone();
    let good = clients.client("runtime.agentregistry.test");
    let stranger = Authority::new("stranger-ca").client("runtime.agentregistry.test");

    assert!(lists_over_tls(&address, &files.ca, Some(&good)).await);
    assert!(
        !lists_over_tls(&address, &files.ca, None).await,
        "a client without a certificate was served"
    );
    assert!(
        !lists_over_tls(&address, &files.ca, Some(&stranger)).await,
        "a certificate from another CA was accepted"
    );

    // grpcurl and Python present the certificate the same way.
    let ca = files
        .ca_file(&files.ca, "server-ca.pem")
        .display()
        .to_string();
    let cert = pki::write(files.dir.path(), "client.pem", &good.cert_pem);
    let key = pki::write(files.dir.path(), "client.key", &good.key_pem);
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let (ok, listed) = grpcurl(&[
        "-cacert", &ca, "-cert", &cert, "-key", &key, &address, "list",
    ])
    .await;
    assert!(ok, "grpcurl with a client certificate:\n{listed}");
    let (ok, refused) = grpcurl(&["-cacert", &ca, &address, "list"]).await;
    assert!(!ok, "grpcurl without a client certificate:\n{refused}");
    let token = auth::token("python", "acme", &["viewer"]);
    let with = python_tls_client(&[
        "--registry",
        &address,
        "--ca",
        &ca,
        "--token",
        &token,
        "--cert",
        &cert,
        "--key",
        &key,
    ])
    .await;
    assert!(with.contains("list agents OK"), "{with}");
    let without =
        python_tls_client(&["--registry", &address, "--ca", &ca, "--token", &token]).await;
    assert!(without.contains("health error UNAVAILABLE"), "{without}");
    stack.finish().await;
}

#[tokio::test]
async fn plaintext_on_a_non_loopback_address_needs_tls_or_the_mesh_flag() {
    let database = TestDatabase::fresh().await;
    let launch = || {
        Stack::default_registry()
            .arg("--log-format")
            .arg("json")
            .arg("--listen")
            .arg("0.0.0.0:0")
            .env("DATABASE_URL", database.url())
    };
    let registry = binary("registry-service");
    let (status, output) = Process::run_to_exit(&registry, launch()).await;
    assert!(!status.success(), "plaintext on 0.0.0.0 started:\n{output}");
    let line = output
        .lines()
        .find(|l| l.starts_with("registry-service: "))
        .unwrap_or_default();
    assert!(
        line.contains("REGISTRY_LISTEN: refusing plaintext on non-loopback address 0.0.0.0:0")
            && line.contains("REGISTRY_MESH_MTLS"),
        "{output}"
    );

    // The operator states that a mesh provides mutual TLS.
    let meshed = Process::start(
        &registry,
        launch().env("REGISTRY_MESH_MTLS", "true"),
        "registry-service serving",
    )
    .await;
    assert!(meshed.address.starts_with("0.0.0.0:"), "{}", meshed.address);
    let (status, output) = meshed.terminate().await;
    assert!(status.success(), "{output}");

    // TLS needs no flag.
    let files = ServerFiles::new("any-ca");
    let tls = Process::start(
        &registry,
        launch()
            .env("REGISTRY_TLS_CERT_FILE", files.cert.display().to_string())
            .env("REGISTRY_TLS_KEY_FILE", files.key.display().to_string()),
        "registry-service serving",
    )
    .await;
    let (status, output) = tls.terminate().await;
    assert!(status.success(), "{status:?} {output}");
    database.drop_database().await;
}

#[tokio::test]
async fn tls_settings_that_do_not_fit_stop_start_up_naming_the_setting() {
    let database = TestDatabase::fresh().await;
    let files = ServerFiles::new("ca");
    let other_key = Authority::new("other").loopback_server().key_pem;
    let mismatched = pki::write(files.dir.path(), "other.key", &other_key);
    let base = || {
        Stack::default_registry()
            .arg("--listen")
            .arg("127.0.0.1:0")
            .env("DATABASE_URL", database.url())
    };
    let path = |p: &Path| p.display().to_string();
    let cases = [
        (
            base().env("REGISTRY_TLS_CERT_FILE", path(&files.cert)),
            "REGISTRY_TLS_KEY_FILE: is required with REGISTRY_TLS_CERT_FILE",
        ),
        (
            base().env("REGISTRY_TLS_CLIENT_CA_FILE", path(&files.cert)),
            "REGISTRY_TLS_CLIENT_CA_FILE: client certificates need TLS",
        ),
        (
            base()
                .env("REGISTRY_TLS_CERT_FILE", path(&files.cert))
                .env("REGISTRY_TLS_KEY_FILE", path(&mismatched)),
            "REGISTRY_TLS_KEY_FILE: does not go with the certificate",
        ),
        (
            base()
                .env("REGISTRY_TLS_CERT_FILE", path(&files.key))
                .env("REGISTRY_TLS_KEY_FILE", path(&files.key)),
            "REGISTRY_TLS_CERT_FILE: holds no PEM certificate",
        ),
        (
            base()
                .env("REGISTRY_TLS_CERT_FILE", "/nonexistent/cert.pem")
                .env("REGISTRY_TLS_KEY_FILE", path(&files.key)),
            "REGISTRY_TLS_CERT_FILE: cannot read /nonexistent/cert.pem",
        ),
    ];
    for (launch, expected) in cases {
        let (status, output) = Process::run_to_exit(&binary("registry-service"), launch).await;
        assert!(!status.success(), "{expected}: started");
        assert!(
            output.contains(expected),
            "expected {expected:?} in {output}"
        );
        assert!(!output.contains("PRIVATE KEY"), "key material printed");
    }
    database.drop_database().await;
}
