//! grpc-web on the registry's gRPC listener, from the outside: a real
//! grpc-web client from npm (Connect, tests/node/grpc_web.js), headless
//! Chromium loading a page from another origin that lists agents through
//! grpc-web (CORS for real: granted to that origin, refused to any other;
//! over plaintext HTTP/1.1 and over TLS with HTTP/2), and raw HTTP/1.1
//! preflights and calls for what a browser cannot be made to send (a
//! forged, huge or repeated `Origin`).
//!
//! Needs `node` with tests/node's packages (`bash scripts/node-tools`) and
//! `/usr/bin/chromium` (Debian's `chromium`); scripts/test installs both.
//! Without them these tests fail with what to install (they never skip).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use proto::v1 as pb;
use proto::v1::agent_service_client::AgentServiceClient;
use tests::stack::{Stack, TestDatabase};
use tests::{Launch, Process, auth, binary, http_get, pki};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// How long a Node program or a browser run may take.
const DEADLINE: Duration = Duration::from_secs(120);

/// How many checks grpc_web.js asserts: a count that falls short means a
/// step was skipped. Update it with the program.
const NODE_CHECKS: u32 = 16;

/// The browser every machine of the project has from Debian.
const CHROMIUM: &str = "/usr/bin/chromium";

/// The registry's message limit in these tests (REGISTRY_MAX_MESSAGE_BYTES).
const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// npm packages these tests run (tests/node/package.json).
const PACKAGES: [&str; 6] = [
    "@connectrpc/connect",
    "@connectrpc/connect-node",
    "@connectrpc/connect-web",
    "@bufbuild/protobuf",
    "@bufbuild/buf",
    "esbuild",
];

/// A Node grpc-web client creates and lists agents over HTTP/1.1 and
/// HTTP/2, decodes a BadRequest, and meets every refusal native gRPC
/// gets: no token, a viewer writing, an unknown method, a message over
/// the limit.
#[tokio::test]
async fn an_npm_grpc_web_client_creates_and_lists_agents_and_meets_every_refusal() {
    let node_dir = node_dir();
    require_node_packages(&node_dir);
    let stack = Stack::start_with(limited(Stack::default_registry())).await;
    let token = |role: &str| auth::token(&format!("grpc-web-{role}"), "acme", &[role]);
    let stdout = run_node(
        &stack,
        &node_dir,
        &[
            "grpc_web.js",
            "--proto-root",
            &proto_root(),
            "--registry-url",
            &stack.registry.url(),
            "--editor-token",
            &token("editor"),
            "--viewer-token",
            &token("viewer"),
            "--max-message-bytes",
            &MAX_MESSAGE_BYTES.to_string(),
        ],
    )
    .await;
    assert_eq!(
        stdout.lines().last().unwrap_or_default(),
        format!("grpc-web node: all {NODE_CHECKS} checks passed"),
        "unexpected final line of grpc_web.js:\n{stdout}"
    );
    stack.finish().await;
}

/// Headless Chromium loads a page from an origin the registry allows; the
/// page lists the tenant's agents through grpc-web and shows their names.
#[tokio::test]
async fn a_browser_page_on_an_allowed_origin_lists_agents_through_grpc_web() {
    let page = PageServer::bind().await;
    let stack = Stack::start_with(
        Stack::default_registry()
            .env("REGISTRY_GRPC_WEB_ALLOWED_ORIGINS", page.origin())
            .arg("--metrics-listen")
            .arg("127.0.0.1:0"),
    )
    .await;
    let mut agents = AgentServiceClient::new(stack.channel_as("ed", "acme", &["editor"]).await);
    let mut names = vec!["Browser Analyst".to_owned(), "Browser Writer".to_owned()];
    for name in &names {
        agents
            .create_agent(pb::CreateAgentRequest {
                agent: Some(pb::Agent {
                    name: name.clone(),
                    role: "r".to_owned(),
                    goal: "g".to_owned(),
                    ..Default::default()
                }),
                change_description: String::new(),
                ..Default::default()
            })
            .await
            .expect("create agent");
    }
    // Another tenant's agent, which the page's token must not see.
    AgentServiceClient::new(stack.channel_as("eve", "other", &["editor"]).await)
        .create_agent(pb::CreateAgentRequest {
            agent: Some(pb::Agent {
                name: "Other Tenant".to_owned(),
                role: "r".to_owned(),
                goal: "g".to_owned(),
                ..Default::default()
            }),
            change_description: String::new(),
            ..Default::default()
        })
        .await
        .expect("create the other tenant's agent");

    let token = auth::token("page", "acme", &["viewer"]);
    let (outcome, text) = page.run(&stack, &token).await;
    names.sort();
    assert_eq!(
        (outcome.as_str(), text.as_str()),
        ("ok", serde_json::to_string(&names).expect("json").as_str()),
        "the page's result\n--- service logs\n{}",
        stack.logs()
    );
    let metrics = registry_metrics(&stack).await;
    assert_eq!(
        tests::metric_value(
            &metrics,
            r#"grpc_server_handled_total{grpc_type="unary",grpc_service="agentregistry.v1.AgentService",grpc_method="ListAgents",grpc_code="OK"}"#
        ),
        1,
        "the page's one ListAgents, counted as any call:\n{metrics}"
    );
    stack.finish().await;
}

/// The same page against a registry serving TLS, as in production: the
/// browser negotiates HTTP/2 (the only protocol the registry's ALPN
/// offers) and grpc-web and CORS work there as over HTTP/1.1.
#[tokio::test]
async fn a_browser_page_lists_agents_over_tls_and_http2() {
    let page = PageServer::bind().await;
    let ca = pki::Authority::new("grpc-web-ca");
    let server = ca.loopback_server();
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = pki::write(dir.path(), "tls.crt", &server.cert_pem);
    let key = pki::write(dir.path(), "tls.key", &server.key_pem);
    let stack = Stack::start_with(
        Stack::default_registry()
            .env("REGISTRY_GRPC_WEB_ALLOWED_ORIGINS", page.origin())
            .env("REGISTRY_TLS_CERT_FILE", cert.display().to_string())
            .env("REGISTRY_TLS_KEY_FILE", key.display().to_string()),
    )
    .await;
    let token = auth::token("page", "acme", &["viewer"]);
    let registry = format!("https://{}", stack.registry.address);
    // The throw-away CA is not in Chromium's trust store; what is tested
    // here is the protocol, not certificate validation (registry_tls.rs).
    let (outcome, text) = page
        .run_against(&stack, &registry, &token, &["--ignore-certificate-errors"])
        .await;
    assert_eq!(
        (outcome.as_str(), text.as_str()),
        ("ok", "[]"),
        "the page's result (a tenant without agents)\n--- service logs\n{}",
        stack.logs()
    );
    stack.finish().await;
}

/// The same page from an origin the registry does not list: the browser's
/// preflight gets no grant, the page reports the failure, and the call
/// itself never reaches the registry.
#[tokio::test]
async fn a_browser_page_on_another_origin_is_refused_by_cors() {
    let page = PageServer::bind().await;
    // Another port: another origin, though the same host.
    let elsewhere = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let allowed = format!(
        "http://127.0.0.1:{}",
        elsewhere.local_addr().expect("address").port()
    );
    let stack = Stack::start_with(
        Stack::default_registry()
            .env("REGISTRY_GRPC_WEB_ALLOWED_ORIGINS", allowed)
            .arg("--metrics-listen")
            .arg("127.0.0.1:0"),
    )
    .await;
    let token = auth::token("page", "acme", &["viewer"]);
    let (outcome, text) = page.run(&stack, &token).await;
    assert_eq!(outcome, "error", "the page's result: {text}");
    // Chromium's words for a fetch that CORS blocked, as Connect reports it.
    assert!(
        text.contains("Failed to fetch"),
        "the page's result: {text}"
    );
    let metrics = registry_metrics(&stack).await;
    assert!(
        !metrics.contains(r#"grpc_method="ListAgents""#),
        "the refused page's call reached the registry:\n{metrics}"
    );
    stack.finish().await;
}

/// Preflights and calls as a browser (or anyone) could send them over
/// HTTP/1.1: only the one allowed origin, sent once, gets a grant; a
/// forged or huge `Origin` gets the same bare answer as any stranger;
/// preflights need no token and are not counted as calls; grpc-web calls
/// keep auth, the unknown-path answer and the message limit.
#[tokio::test]
async fn preflights_grant_only_the_allowed_origin_and_calls_keep_every_check() {
    const ALLOWED: &str = "https://ui.example.test";
    let stack = Stack::start_with(
        limited(Stack::default_registry())
            .env(
                "REGISTRY_GRPC_WEB_ALLOWED_ORIGINS",
                format!("https://other.example.test,{ALLOWED}"),
            )
            .arg("--metrics-listen")
            .arg("127.0.0.1:0"),
    )
    .await;
    let registry = stack.registry.address.clone();
    let list = "/agentregistry.v1.AgentService/ListAgents";

    // The allowed origin's preflight: every grant a grpc-web call needs.
    let granted = http1(&registry, preflight(list, &[ALLOWED]).as_bytes()).await;
    assert_eq!(granted.status, 204, "{granted:?}");
    assert_eq!(granted.header("access-control-allow-origin"), Some(ALLOWED));
    assert_eq!(granted.header("access-control-allow-methods"), Some("POST"));
    let allowed_headers = granted
        .header("access-control-allow-headers")
        .unwrap_or_default()
        .to_owned();
    for needed in [
        "authorization",
        "content-type",
        "x-grpc-web",
        "x-user-agent",
        "grpc-timeout",
    ] {
        assert!(
            allowed_headers.split(", ").any(|h| h == needed),
            "{needed} missing from {allowed_headers:?}"
        );
    }
    assert_eq!(granted.header("vary"), Some("origin"));
    assert_eq!(granted.header("access-control-allow-credentials"), None);
    assert!(
        granted.header("grpc-status").is_none(),
        "a preflight is no call"
    );

    // Everyone else gets one bare answer, the same whatever they sent
    // (nothing echoed): the granted one without any Access-Control-*.
    let bare: Vec<(String, String)> = granted
        .headers_but_date()
        .into_iter()
        .filter(|(name, _)| !name.starts_with("access-control-"))
        .collect();
    let huge = format!("https://{}.example.test", "a".repeat(16 * 1024));
    let forged: Vec<Vec<&str>> = vec![
        vec!["https://evil.example.test"],
        vec!["https://ui.example.test.evil.test"],
        vec!["http://ui.example.test"],
        vec!["null"],
        vec![huge.as_str()],
        vec![ALLOWED, ALLOWED],
        vec!["https://evil.example.test", ALLOWED],
        vec![],
    ];
    for origins in &forged {
        let refused = http1(&registry, preflight(list, origins).as_bytes()).await;
        assert_eq!(refused.status, 204, "{refused:?}");
        assert_eq!(
            refused.headers_but_date(),
            bare,
            "origins {:?}",
            origins
                .iter()
                .map(|o| &o[..o.len().min(40)])
                .collect::<Vec<_>>()
        );
    }

    // grpc-web calls: granted headers for the allowed origin, auth as ever.
    let viewer = auth::token("raw", "acme", &["viewer"]);
    let empty = framed(&pb::ListAgentsRequest::default().encode_to_vec());
    let call = http1(
        &registry,
        &grpc_web_post(list, Some(ALLOWED), Some(&viewer), &empty),
    )
    .await;
    assert_eq!(call.status, 200, "{call:?}");
    assert_eq!(call.header("access-control-allow-origin"), Some(ALLOWED));
    assert_eq!(
        call.header("access-control-expose-headers"),
        Some("grpc-status, grpc-message, grpc-status-details-bin")
    );
    assert_eq!(call.header("vary"), Some("origin"));
    assert_eq!(call.grpc_status(), Some(0), "{call:?}");
    let stranger = http1(
        &registry,
        &grpc_web_post(
            list,
            Some("https://evil.example.test"),
            Some(&viewer),
            &empty,
        ),
    )
    .await;
    assert_eq!(
        stranger.header("access-control-allow-origin"),
        None,
        "{stranger:?}"
    );
    assert_eq!(stranger.header("access-control-expose-headers"), None);
    assert_eq!(
        stranger.grpc_status(),
        Some(0),
        "served: CORS only tells browsers"
    );
    let anonymous = http1(&registry, &grpc_web_post(list, Some(ALLOWED), None, &empty)).await;
    assert_eq!(anonymous.grpc_status(), Some(16), "UNAUTHENTICATED");
    let unknown = http1(
        &registry,
        &grpc_web_post(
            "/agentregistry.v9.NowhereService/Nothing",
            Some(ALLOWED),
            None,
            &framed(&[]),
        ),
    )
    .await;
    assert_eq!(unknown.grpc_status(), Some(12), "UNIMPLEMENTED before auth");
    // A frame announcing one byte over the limit, without the bytes: the
    // limit is checked on the length prefix, before anything is read.
    let editor = auth::token("raw", "acme", &["editor"]);
    let mut announced = vec![0u8];
    announced.extend_from_slice(
        &u32::try_from(MAX_MESSAGE_BYTES + 1)
            .expect("small")
            .to_be_bytes(),
    );
    let too_big = http1(
        &registry,
        &grpc_web_post(
            "/agentregistry.v1.AgentService/CreateAgent",
            Some(ALLOWED),
            Some(&editor),
            &announced,
        ),
    )
    .await;
    assert_eq!(too_big.grpc_status(), Some(11), "OUT_OF_RANGE: {too_big:?}");
    // An HTTP/1.1 request that is neither grpc-web nor a preflight.
    let plain = http1(
        &registry,
        format!("GET {list} HTTP/1.1\r\nHost: registry\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(plain.status, 400, "{plain:?}");

    // Metrics: the calls above under their methods (or `unknown`), the
    // preflights and the plain GET nowhere, no label from what was sent.
    let metrics = registry_metrics(&stack).await;
    let ours = |line: &&str| {
        line.starts_with("grpc_server_started_total{")
            && (line.contains(r#"grpc_service="agentregistry.v1.AgentService""#)
                || line.contains(r#"grpc_service="unknown""#))
    };
    let counted: u64 = metrics
        .lines()
        .filter(ours)
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(counted, 5, "5 grpc-web calls, no preflight:\n{metrics}");
    for needle in ["evil", "OPTIONS", "Nowhere", "aaaa"] {
        assert!(!metrics.contains(needle), "{needle} in the metrics");
    }
    stack.finish().await;
}

/// An allowed-origins list a browser could never match, or one that would
/// grant every origin, stops start-up naming the setting and the entry.
#[tokio::test]
async fn origins_no_browser_sends_stop_start_up_naming_the_setting() {
    let database = TestDatabase::fresh().await;
    for (origins, expected) in [
        ("*", "never allowed"),
        ("https://ui.example.com/", "no path"),
        ("https://ui.example.com:443", "default port"),
        ("ui.example.com", "http:// or https://"),
    ] {
        let launch = Stack::default_registry()
            .arg("--listen")
            .arg("127.0.0.1:0")
            .env("DATABASE_URL", database.url())
            .env(
                "REGISTRY_GRPC_WEB_ALLOWED_ORIGINS",
                format!("https://ok.example.com,{origins}"),
            );
        let (status, output) = Process::run_to_exit(&binary("registry-service"), launch).await;
        assert!(!status.success(), "{origins}: started");
        let line = format!("REGISTRY_GRPC_WEB_ALLOWED_ORIGINS: {origins:?}");
        assert!(
            output.contains(&line) && output.contains(expected),
            "expected {line} … {expected} in {output}"
        );
    }
    database.drop_database().await;
}

/// `launch` with the smaller message limit these tests check against.
fn limited(launch: Launch) -> Launch {
    launch.env("REGISTRY_MAX_MESSAGE_BYTES", MAX_MESSAGE_BYTES.to_string())
}

fn node_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("node")
}

fn proto_root() -> String {
    format!("{}/../proto", env!("CARGO_MANIFEST_DIR"))
}

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

/// Runs `node ARGS` in tests/node within [`DEADLINE`]; returns its stdout,
/// or panics with everything it and the services printed.
async fn run_node(stack: &Stack, node_dir: &Path, args: &[&str]) -> String {
    let run = tokio::process::Command::new("node")
        .args(args)
        .current_dir(node_dir)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(DEADLINE, run)
        .await
        .unwrap_or_else(|_| panic!("node {args:?} did not finish within {DEADLINE:?}"))
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        panic!(
            "node {} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{}\n--- service logs\n{}",
            args[0],
            output.status,
            String::from_utf8_lossy(&output.stderr),
            stack.logs()
        );
    }
    stdout
}

async fn registry_metrics(stack: &Stack) -> String {
    let address = stack
        .registry
        .log_field("metrics serving", "listen")
        .expect("the registry serves metrics");
    http_get(&address, "/metrics").await
}

/// A local HTTP server on an origin of its own (its own port) that serves
/// the page: `/` (the HTML, with the registry's address and a token) and
/// `/page.js` (tests/node/browser/page.js bundled by esbuild at test time).
struct PageServer {
    listener: Option<TcpListener>,
    port: u16,
}

impl PageServer {
    /// Binds first, so its origin can be given to the registry.
    async fn bind() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        Self {
            listener: Some(listener),
            port,
        }
    }

    fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Bundles the page's script, serves the page, has headless Chromium
    /// load it, and returns the page's `#result`: its `data-outcome` and
    /// its text.
    async fn run(self, stack: &Stack, token: &str) -> (String, String) {
        let registry = stack.registry.url();
        self.run_against(stack, &registry, token, &[]).await
    }

    /// [`PageServer::run`] with the page calling `registry` (a base URL),
    /// Chromium started with `flags` as well.
    async fn run_against(
        mut self,
        stack: &Stack,
        registry: &str,
        token: &str,
        flags: &[&str],
    ) -> (String, String) {
        let node_dir = node_dir();
        require_node_packages(&node_dir);
        assert!(
            Path::new(CHROMIUM).is_file(),
            "{CHROMIUM} is missing: install Debian's `chromium` package (scripts/test does)"
        );
        let bundle_dir = tempfile::tempdir().expect("tempdir");
        let out = bundle_dir.path().to_str().expect("utf-8 path").to_owned();
        run_node(
            stack,
            &node_dir,
            &[
                "browser/bundle.js",
                "--proto-root",
                &proto_root(),
                "--out",
                &out,
            ],
        )
        .await;
        let script = std::fs::read(bundle_dir.path().join("page.js")).expect("the bundle");
        let config = serde_json::json!({ "registry": registry, "token": token });
        let html = format!(
            "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>agents</title></head>\
             <body><pre id=\"result\" data-outcome=\"pending\">pending</pre>\
             <script type=\"application/json\" id=\"config\">{config}</script>\
             <script type=\"module\" src=\"/page.js\"></script></body></html>\n"
        );
        let listener = self.listener.take().expect("served once");
        let server = tokio::spawn(serve_page(listener, html.into_bytes(), script));

        let profile = tempfile::tempdir().expect("tempdir");
        let url = format!("{}/", self.origin());
        // Virtual time does not pass while a fetch is pending, so the DOM
        // is dumped once the page's call has finished (or failed).
        let run = tokio::process::Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--virtual-time-budget=30000",
                "--dump-dom",
            ])
            .args(flags)
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(&url)
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(DEADLINE, run)
            .await
            .unwrap_or_else(|_| panic!("chromium did not finish within {DEADLINE:?}"))
            .expect("chromium runs");
        server.abort();
        let dom = String::from_utf8_lossy(&output.stdout).into_owned();
        result_of(&dom).unwrap_or_else(|| {
            panic!(
                "no #result in the page chromium dumped ({}):\n{dom}\n--- stderr\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            )
        })
    }
}

/// Serves `/` and `/page.js`, holds `/hold` open unanswered until the
/// page aborts it (and 404 for anything else), until aborted.
async fn serve_page(listener: TcpListener, html: Vec<u8>, script: Vec<u8>) {
    let files = Arc::new((html, script));
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        let files = Arc::clone(&files);
        tokio::spawn(async move {
            let Some(head) = read_head(&mut stream).await else {
                return;
            };
            let path = head.split_whitespace().nth(1).unwrap_or_default();
            if path == "/hold" {
                // Never answered: held until the page aborts it (see
                // browser/page.js), which closes the connection.
                let _ = stream.read(&mut [0u8; 1]).await;
                return;
            }
            let (status, kind, body): (&str, &str, &[u8]) = match path {
                "/" => ("200 OK", "text/html; charset=utf-8", &files.0),
                "/page.js" => ("200 OK", "text/javascript", &files.1),
                _ => ("404 Not Found", "text/plain", b"not found"),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\
                 Cache-Control: no-store\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.write_all(body).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// A request's head (up to the blank line), at most 64 KiB.
async fn read_head(stream: &mut tokio::net::TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut buffer = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > 64 * 1024 {
            return None;
        }
        let read = stream.read(&mut buffer).await.ok()?;
        if read == 0 {
            return None;
        }
        head.extend_from_slice(&buffer[..read]);
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// `data-outcome` and text of the `<pre id="result">` in a dumped DOM.
fn result_of(dom: &str) -> Option<(String, String)> {
    let start = dom.find("<pre id=\"result\"")?;
    let element = &dom[start..];
    let outcome = element
        .split_once("data-outcome=\"")?
        .1
        .split_once('"')?
        .0
        .to_owned();
    let text = element.split_once('>')?.1.split_once("</pre>")?.0;
    let text = text
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    Some((outcome, text))
}

/// A preflight for a grpc-web call to `path` with these `Origin` headers.
fn preflight(path: &str, origins: &[&str]) -> String {
    let mut request = format!(
        "OPTIONS {path} HTTP/1.1\r\nHost: registry\r\nConnection: close\r\n\
         Access-Control-Request-Method: POST\r\n\
         Access-Control-Request-Headers: authorization,content-type,x-grpc-web,x-user-agent\r\n"
    );
    for origin in origins {
        request.push_str(&format!("Origin: {origin}\r\n"));
    }
    request.push_str("\r\n");
    request
}

/// `message` as the body of a grpc-web (binary) call: one frame.
fn framed(message: &[u8]) -> Vec<u8> {
    let mut body = vec![0u8];
    body.extend_from_slice(&u32::try_from(message.len()).expect("small").to_be_bytes());
    body.extend_from_slice(message);
    body
}

/// A grpc-web (binary) call to `path` whose body is `body`.
fn grpc_web_post(path: &str, origin: Option<&str>, token: Option<&str>, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: registry\r\nConnection: close\r\n\
         Content-Type: application/grpc-web+proto\r\nX-Grpc-Web: 1\r\n\
         Content-Length: {}\r\n",
        body.len()
    );
    if let Some(origin) = origin {
        request.push_str(&format!("Origin: {origin}\r\n"));
    }
    if let Some(token) = token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// What came back: status, headers (lowercase names, in order), body.
#[derive(Debug)]
struct Http1Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Http1Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every header but `date`, which changes by the second.
    fn headers_but_date(&self) -> Vec<(String, String)> {
        self.headers
            .iter()
            .filter(|(name, _)| name != "date")
            .cloned()
            .collect()
    }

    /// The call's status: from the headers (a trailers-only answer), else
    /// from the grpc-web trailers frame at the end of the body.
    fn grpc_status(&self) -> Option<u32> {
        if let Some(status) = self.header("grpc-status") {
            return status.parse().ok();
        }
        let mut rest = self.body.as_slice();
        while rest.len() >= 5 {
            let flag = rest[0];
            let length = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
            let frame = rest.get(5..5 + length)?;
            if flag & 0x80 != 0 {
                return String::from_utf8_lossy(frame).lines().find_map(|line| {
                    line.trim()
                        .strip_prefix("grpc-status:")
                        .and_then(|v| v.trim().parse().ok())
                });
            }
            rest = &rest[5 + length..];
        }
        None
    }
}

/// Sends `request` on a new connection and reads the whole response.
async fn http1(address: &str, request: &[u8]) -> Http1Response {
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    stream.write_all(request).await.expect("send the request");
    let mut raw = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut raw))
        .await
        .expect("a response within the deadline")
        .expect("read");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP response: {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {head}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    Http1Response {
        status,
        headers,
        body,
    }
}

/// The payload of a chunked HTTP/1.1 body.
fn dechunk(mut chunked: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    while let Some(end) = chunked.windows(2).position(|w| w == b"\r\n") {
        let size = String::from_utf8_lossy(&chunked[..end]);
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("0").trim(), 16)
            .expect("chunk size");
        if size == 0 {
            break;
        }
        let start = end + 2;
        body.extend_from_slice(&chunked[start..start + size]);
        chunked = &chunked[start + size + 2..];
    }
    body
}
