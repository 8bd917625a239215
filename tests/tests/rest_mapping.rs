//! The REST face of the contract, read from what the registry serves: the
//! `google.api.http` rules in `proto::FILE_DESCRIPTOR_SET` (the bytes
//! reflection serves and Envoy's grpc_json_transcoder is given).
//!
//! - Every REST call of the report (tests/fixtures/report_rest_paths.txt,
//!   copied from it with the RPC each must reach) matches exactly one
//!   binding, of that RPC, by HTTP method and path template; its query
//!   parameters are fields of the request.
//! - Every public RPC has a rule whose path variables and body name fields
//!   of its request message, and no two bindings can match the same call.
//! - deploy/envoy/envoy.yaml transcodes exactly the public services (each
//!   in the descriptor set), with grpc-web and CORS before the transcoder
//!   and the router, and reaches the registry over TLS with HTTP/2; and it
//!   parses as an Envoy v3 bootstrap with Envoy's own API types
//!   (tests/python/envoy_config.py; no Envoy binary is packaged for Debian,
//!   PyPI or npm, so `envoy --mode validate` cannot run here).
//! - A reflection client (the real grpcurl) sees the rules and the field
//!   behaviours on the running registry: the served descriptors keep their
//!   custom options.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use std::time::Duration;

use prost::Message;
use prost_types::{DescriptorProto, FileDescriptorSet};
use tests::stack::Stack;
use yaml_rust2::{Yaml, YamlLoader};

/// The services a REST or grpc-web client may reach (CryptoService is
/// internal: the registry alone calls it).
const PUBLIC_SERVICES: [&str; 7] = [
    "agentregistry.v1.AgentService",
    "agentregistry.v1.ProviderService",
    "agentregistry.v1.RuntimeService",
    "agentregistry.v1.KeyService",
    "agentregistry.v1.WatchService",
    "agentregistry.v1.LabelPolicyService",
    "agentregistry.v1.AuditService",
];

/// Query parameters of the report's calls that no request has, and why.
const REPORT_ONLY_QUERY: [&str; 1] = [
    // An offset page number: pages are `page_token`s here (AIP-158).
    "page",
];

#[test]
fn every_rest_path_of_the_report_reaches_its_rpc() {
    let api = Api::load();
    let listing = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/report_rest_paths.txt"),
    )
    .expect("the report's REST paths");
    let mut checked = 0;
    for line in listing.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [verb, target, rpc] = fields[..] else {
            panic!("malformed line: {line}");
        };
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let matches: Vec<&Binding> = api
            .bindings
            .iter()
            .filter(|b| b.verb == verb && template_matches(&b.template, path))
            .collect();
        let reached: Vec<&str> = matches.iter().map(|b| b.rpc.as_str()).collect();
        assert_eq!(reached, [rpc], "{verb} {target}: bindings matched");
        let request = &api.requests[rpc];
        for parameter in query.split('&').filter(|p| !p.is_empty()) {
            let name = parameter.split('=').next().unwrap_or_default();
            assert!(
                request.contains(name) || REPORT_ONLY_QUERY.contains(&name),
                "{verb} {target}: query parameter {name} is no field of {rpc}'s request"
            );
        }
        checked += 1;
    }
    // The four versioning endpoints and the five examples.
    assert_eq!(checked, 9, "lines read from the listing");
}

#[test]
fn every_public_rpc_has_a_rule_over_its_request_fields() {
    let api = Api::load();
    let mut rpcs_with_rules = BTreeSet::new();
    for binding in &api.bindings {
        rpcs_with_rules.insert(binding.rpc.clone());
        let request = &api.requests[&binding.rpc];
        let mut bound = BTreeSet::new();
        for segment in binding.template.split('/') {
            if let Some(variable) = variable(segment) {
                assert!(
                    request.contains(variable),
                    "{}: {} names no field of the request",
                    binding.rpc,
                    binding.template
                );
                bound.insert(variable.to_owned());
            } else {
                assert!(
                    !segment.contains(['{', '}', '*', ':']),
                    "{}: segment {segment:?} is not a plain literal",
                    binding.rpc
                );
            }
        }
        match binding.body.as_str() {
            "" => assert!(
                ["GET", "DELETE"].contains(&binding.verb.as_str()),
                "{}: {} without a body",
                binding.rpc,
                binding.verb
            ),
            "*" => {}
            field => assert!(
                request.contains(field) && !field.contains('.'),
                "{}: body {field:?} is no top-level field of the request",
                binding.rpc
            ),
        }
        assert!(
            binding.template.starts_with("/api/v1/"),
            "{}: {} outside /api/v1",
            binding.rpc,
            binding.template
        );
    }
    assert_eq!(
        rpcs_with_rules,
        api.requests.keys().cloned().collect(),
        "every public RPC has a google.api.http rule"
    );

    // No call can match two bindings: same verb and same segment count
    // with a literal-or-variable clash in every position.
    for (i, a) in api.bindings.iter().enumerate() {
        for b in &api.bindings[i + 1..] {
            let (sa, sb): (Vec<&str>, Vec<&str>) = (
                a.template.split('/').collect(),
                b.template.split('/').collect(),
            );
            let overlap = a.verb == b.verb
                && sa.len() == sb.len()
                && sa
                    .iter()
                    .zip(&sb)
                    .all(|(x, y)| x == y || variable(x).is_some() || variable(y).is_some());
            assert!(
                !overlap,
                "{} {} ({}) and {} {} ({}) can match the same call",
                a.verb, a.template, a.rpc, b.verb, b.template, b.rpc
            );
        }
    }
}

#[test]
fn envoy_transcodes_the_public_services_over_tls_and_http2() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/envoy/envoy.yaml");
    let text = std::fs::read_to_string(&path).expect("deploy/envoy/envoy.yaml");
    let docs = YamlLoader::load_from_str(&text).expect("envoy.yaml is YAML");
    let config = &docs[0];

    let listeners = config["static_resources"]["listeners"]
        .as_vec()
        .expect("listeners");
    assert_eq!(listeners.len(), 1, "one listener");
    let manager = &listeners[0]["filter_chains"][0]["filters"][0];
    assert_eq!(
        manager["name"].as_str(),
        Some("envoy.filters.network.http_connection_manager")
    );
    let manager = &manager["typed_config"];
    let filters = manager["http_filters"].as_vec().expect("http_filters");
    let names: Vec<&str> = filters
        .iter()
        .map(|f| f["name"].as_str().expect("filter name"))
        .collect();
    assert_eq!(
        names,
        [
            "envoy.filters.http.cors",
            "envoy.filters.http.grpc_web",
            "envoy.filters.http.grpc_json_transcoder",
            "envoy.filters.http.router",
        ],
        "HTTP filters, outermost first"
    );
    for filter in filters {
        let kind = filter["typed_config"]["@type"].as_str().unwrap_or_default();
        assert!(
            kind.starts_with("type.googleapis.com/envoy.extensions.filters.http."),
            "{kind}"
        );
    }

    // The transcoder: the public services, each in the descriptor set.
    let transcoder = &filters[2]["typed_config"];
    let services: BTreeSet<&str> = transcoder["services"]
        .as_vec()
        .expect("services")
        .iter()
        .map(|s| s.as_str().expect("service name"))
        .collect();
    assert_eq!(services, PUBLIC_SERVICES.into_iter().collect());
    let set = FileDescriptorSet::decode(proto::FILE_DESCRIPTOR_SET).expect("descriptor set");
    let described: BTreeSet<String> = set
        .file
        .iter()
        .flat_map(|f| {
            f.service
                .iter()
                .map(move |s| format!("{}.{}", f.package(), s.name()))
        })
        .collect();
    for service in &services {
        assert!(
            described.contains(*service),
            "{service} is not in the descriptor set"
        );
    }
    assert!(
        transcoder["proto_descriptor"]
            .as_str()
            .is_some_and(|p| p.ends_with(".binpb")),
        "the transcoder reads a descriptor set file"
    );
    // JSON as the report wrote it: snake_case names, unset scalars shown.
    let print = &transcoder["print_options"];
    assert_eq!(print["preserve_proto_field_names"].as_bool(), Some(true));
    assert_eq!(print["always_print_primitive_fields"].as_bool(), Some(true));
    // A refused call keeps its status and details for REST clients.
    assert_eq!(transcoder["convert_grpc_status"].as_bool(), Some(true));

    // CORS: a policy that names its origins and lets a browser read the
    // gRPC status trailers grpc-web turns into headers.
    let routes = &manager["route_config"]["virtual_hosts"][0];
    let cors = &routes["typed_per_filter_config"]["envoy.filters.http.cors"];
    assert!(
        !cors["allow_origin_string_match"]
            .as_vec()
            .expect("allowed origins")
            .is_empty()
    );
    let exposed = cors["expose_headers"].as_str().expect("expose_headers");
    for header in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
        assert!(exposed.contains(header), "{header} not exposed");
    }
    let allowed = cors["allow_headers"].as_str().expect("allow_headers");
    for header in ["authorization", "content-type", "x-grpc-web"] {
        assert!(allowed.contains(header), "{header} not allowed");
    }

    // The upstream: the registry, HTTP/2 (gRPC) over TLS with ALPN h2.
    let clusters = config["static_resources"]["clusters"]
        .as_vec()
        .expect("clusters");
    let route_cluster = routes["routes"][0]["route"]["cluster"]
        .as_str()
        .expect("route cluster");
    let cluster = clusters
        .iter()
        .find(|c| c["name"].as_str() == Some(route_cluster))
        .expect("the routed cluster is defined");
    let options = &cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
    assert!(
        !options["explicit_http_config"]["http2_protocol_options"].is_badvalue(),
        "the upstream speaks HTTP/2"
    );
    let tls = &cluster["transport_socket"];
    assert_eq!(
        tls["name"].as_str(),
        Some("envoy.transport_sockets.tls"),
        "the upstream is TLS"
    );
    let context = &tls["typed_config"]["common_tls_context"];
    assert_eq!(
        context["alpn_protocols"].as_vec().map(Vec::as_slice),
        Some(&[Yaml::String("h2".into())][..])
    );
    assert!(
        !context["validation_context"]["trusted_ca"].is_badvalue(),
        "the registry's certificate is verified"
    );
}

/// How many checks envoy_config.py makes; update it with the program.
const ENVOY_CHECKS: u32 = 21;

#[test]
fn envoy_config_parses_as_an_envoy_bootstrap() {
    let manifest = env!("CARGO_MANIFEST_DIR");
    let script = format!("{manifest}/python/envoy_config.py");
    let output = std::process::Command::new("python3")
        .arg(&script)
        .arg(format!("{manifest}/../deploy/envoy/envoy.yaml"))
        .output()
        .expect("python3 runs");
    let report = format!(
        "--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "{script} failed ({}); it needs `pip install xds-protos pyyaml` \
         (scripts/test does):\n{report}",
        output.status
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).lines().last(),
        Some(format!("envoy config: all {ENVOY_CHECKS} checks passed").as_str()),
        "{report}"
    );
}

#[tokio::test]
async fn reflection_serves_the_http_rules_and_field_behaviours() {
    let stack = Stack::start().await;
    let describe = |symbol: &'static str| {
        let address = stack.registry.address.clone();
        async move {
            let run = tokio::process::Command::new("grpcurl")
                .args(["-plaintext", &address, "describe", symbol])
                .kill_on_drop(true)
                .output();
            let output = tokio::time::timeout(Duration::from_secs(30), run)
                .await
                .unwrap_or_else(|_| panic!("grpcurl describe {symbol} hung"))
                .expect("grpcurl runs (scripts/test installs it)");
            assert!(
                output.status.success(),
                "grpcurl describe {symbol}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            // grpcurl prints options as proto text; compare without spacing.
            String::from_utf8_lossy(&output.stdout)
                .split_whitespace()
                .collect::<String>()
        }
    };
    let rollback = describe("agentregistry.v1.AgentService.RollbackAgent").await;
    assert!(
        rollback.contains(r#"option(.google.api.http)={post:"/api/v1/agents/{agent_id}/rollback/{version_number}"body:"*"}"#),
        "{rollback}"
    );
    let agent = describe("agentregistry.v1.Agent").await;
    assert!(
        agent.contains("stringname=2[(.google.api.field_behavior)=REQUIRED]"),
        "{agent}"
    );
    stack.finish().await;
}

/// The public RPCs' HTTP bindings and their request messages' fields.
struct Api {
    bindings: Vec<Binding>,
    /// RPC (`pkg.Service/Method`) → its request's field paths (nested
    /// messages' fields as `a.b`).
    requests: BTreeMap<String, BTreeSet<String>>,
}

/// One HTTP binding (the rule or one of its additional bindings).
struct Binding {
    rpc: String,
    verb: String,
    template: String,
    body: String,
}

impl Api {
    fn load() -> Self {
        let typed = FileDescriptorSet::decode(proto::FILE_DESCRIPTOR_SET).expect("descriptor set");
        let messages = messages_by_name(&typed);
        let raw = RawSet::decode(proto::FILE_DESCRIPTOR_SET).expect("descriptor set");
        let mut api = Api {
            bindings: Vec::new(),
            requests: BTreeMap::new(),
        };
        for file in raw.file {
            for service in file.service {
                let service_name = format!("{}.{}", file.package, service.name);
                if !PUBLIC_SERVICES.contains(&service_name.as_str()) {
                    continue;
                }
                for method in service.method {
                    let rpc = format!("{service_name}/{}", method.name);
                    let input = method.input_type.trim_start_matches('.');
                    api.requests
                        .insert(rpc.clone(), field_paths(&messages, input, ""));
                    let Some(rule) = method.options.and_then(|o| o.http) else {
                        continue;
                    };
                    for extra in &rule.additional_bindings {
                        api.bindings.push(Binding::of(&rpc, extra));
                    }
                    api.bindings.push(Binding::of(&rpc, &rule));
                }
            }
        }
        api
    }
}

impl Binding {
    fn of(rpc: &str, rule: &HttpRule) -> Self {
        let (verb, template) = match &rule.pattern {
            Some(Pattern::Get(t)) => ("GET", t),
            Some(Pattern::Put(t)) => ("PUT", t),
            Some(Pattern::Post(t)) => ("POST", t),
            Some(Pattern::Delete(t)) => ("DELETE", t),
            Some(Pattern::Patch(t)) => ("PATCH", t),
            other => panic!("{rpc}: unexpected pattern {other:?}"),
        };
        Self {
            rpc: rpc.to_owned(),
            verb: verb.to_owned(),
            template: template.clone(),
            body: rule.body.clone(),
        }
    }
}

/// Whether a concrete path (or the report's `{name}` form) matches a
/// template: same segment count, literals equal, a variable matches one
/// segment, and where both name a variable the names agree.
fn template_matches(template: &str, path: &str) -> bool {
    let (t, p): (Vec<&str>, Vec<&str>) = (template.split('/').collect(), path.split('/').collect());
    t.len() == p.len()
        && t.iter()
            .zip(&p)
            .all(|(t, p)| match (variable(t), variable(p)) {
                (Some(a), Some(b)) => a == b,
                (Some(_), None) => !p.is_empty(),
                (None, _) => t == p,
            })
}

/// The field path of a `{field}` segment.
fn variable(segment: &str) -> Option<&str> {
    segment.strip_prefix('{')?.strip_suffix('}')
}

fn messages_by_name(set: &FileDescriptorSet) -> BTreeMap<String, DescriptorProto> {
    fn add(scope: &str, message: &DescriptorProto, into: &mut BTreeMap<String, DescriptorProto>) {
        let name = format!("{scope}.{}", message.name());
        for nested in &message.nested_type {
            add(&name, nested, into);
        }
        into.insert(name, message.clone());
    }
    let mut all = BTreeMap::new();
    for file in &set.file {
        for message in &file.message_type {
            add(file.package(), message, &mut all);
        }
    }
    all
}

/// A message's field paths, one level into our own message fields (enough
/// for `agent.id`, `provider.id`; enum fields are leaves).
fn field_paths(
    messages: &BTreeMap<String, DescriptorProto>,
    message: &str,
    prefix: &str,
) -> BTreeSet<String> {
    let mut paths = BTreeSet::new();
    for field in &messages[message].field {
        let path = format!("{prefix}{}", field.name());
        let type_name = field.type_name().trim_start_matches('.');
        let is_message = field.r#type() == prost_types::field_descriptor_proto::Type::Message;
        if prefix.is_empty() && is_message && type_name.starts_with("agentregistry.") {
            paths.extend(field_paths(messages, type_name, &format!("{path}.")));
        }
        paths.insert(path);
    }
    paths
}

// The parts of descriptor.proto and google/api/http.proto this test reads.
// prost_types' MethodOptions drops extension fields, so the options are
// decoded here with the `google.api.http` extension (72295728) as a field.

#[derive(Clone, PartialEq, Message)]
struct RawSet {
    #[prost(message, repeated, tag = "1")]
    file: Vec<RawFile>,
}

#[derive(Clone, PartialEq, Message)]
struct RawFile {
    #[prost(string, tag = "2")]
    package: String,
    #[prost(message, repeated, tag = "6")]
    service: Vec<RawService>,
}

#[derive(Clone, PartialEq, Message)]
struct RawService {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, repeated, tag = "2")]
    method: Vec<RawMethod>,
}

#[derive(Clone, PartialEq, Message)]
struct RawMethod {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    input_type: String,
    #[prost(message, optional, tag = "4")]
    options: Option<RawMethodOptions>,
}

#[derive(Clone, PartialEq, Message)]
struct RawMethodOptions {
    #[prost(message, optional, tag = "72295728")]
    http: Option<HttpRule>,
}

#[derive(Clone, PartialEq, Message)]
struct HttpRule {
    #[prost(oneof = "Pattern", tags = "2, 3, 4, 5, 6")]
    pattern: Option<Pattern>,
    #[prost(string, tag = "7")]
    body: String,
    #[prost(message, repeated, tag = "11")]
    additional_bindings: Vec<HttpRule>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum Pattern {
    #[prost(string, tag = "2")]
    Get(String),
    #[prost(string, tag = "3")]
    Put(String),
    #[prost(string, tag = "4")]
    Post(String),
    #[prost(string, tag = "5")]
    Delete(String),
    #[prost(string, tag = "6")]
    Patch(String),
}
