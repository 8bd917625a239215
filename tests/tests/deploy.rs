//! The deployment files under `deploy/`, checked without Docker or a
//! cluster: every YAML file parses, and the Kubernetes manifests, the
//! compose file, the collector config and the Dockerfile agree with each
//! other and with the services' settings — ports, gRPC probes, labels, the
//! NetworkPolicies, non-root containers, healthchecks, and no secret value
//! written down. The Kubernetes manifests are also rendered as a cluster
//! would get them (`kubectl kustomize`: the base, the monitoring Component,
//! the Istio overlay) and validated from outside: `kubernetes-validate
//! --strict` for the built-in kinds, tests/crd/validate.mjs (the published
//! CRD schemas) for Istio's and the Prometheus operator's.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use yaml_rust2::{Yaml, YamlLoader};

/// Settings whose value is itself secret: they may be given only as `*_FILE`
/// paths or Secret references, never as a literal value.
const SECRET_SETTINGS: &[&str] = &[
    "ENCRYPTION_KEY",
    "ENCRYPTION_KEYS",
    "MASTER_SECRET",
    "ENCRYPTION_SALT",
    "JWT_HS256_SECRET",
    "POSTGRES_PASSWORD",
    "PGPASSWORD",
];

/// Words that mark any other variable as secret (unless it is a `*_FILE`).
const SECRET_WORDS: &[&str] = &[
    "SECRET",
    "PASSWORD",
    "PASSWD",
    "TOKEN",
    "PRIVATE",
    "CREDENTIAL",
    "_KEY",
];

/// crypto-service's key sources, in the form that names a file.
const KEY_FILE_SETTINGS: &[&str] = &[
    "ENCRYPTION_KEYRING_FILE",
    "ENCRYPTION_KEY_FILE",
    "ENCRYPTION_KEYS_FILE",
    "MASTER_SECRET_FILE",
];

const NAME_LABEL: &str = "app.kubernetes.io/name";
const PART_OF_LABEL: &str = "app.kubernetes.io/part-of";
const REGISTRY: &str = "registry-service";
const CRYPTO: &str = "crypto-service";

// ---------------------------------------------------------------- all YAML

#[test]
fn every_yaml_file_under_deploy_parses() {
    let paths = yaml_paths(&deploy_dir());
    let names: BTreeSet<String> = paths.iter().map(|p| relative(p)).collect();
    for expected in [
        "compose.yaml",
        "otel-collector.yaml",
        "k8s/base/kustomization.yaml",
        "k8s/istio/kustomization.yaml",
        "k8s/monitoring/kustomization.yaml",
    ] {
        assert!(
            names.contains(expected),
            "deploy/{expected} is missing; YAML files under deploy/: {names:?}"
        );
    }
    let mut failures = Vec::new();
    for path in &paths {
        let name = relative(path);
        match parse(path) {
            Err(error) => failures.push(format!("deploy/{name}: {error}")),
            Ok(docs) if docs.iter().all(Yaml::is_null) => {
                failures.push(format!("deploy/{name}: holds no YAML document"));
            }
            Ok(docs) if name.starts_with("k8s/") => {
                for (index, doc) in docs.iter().enumerate().filter(|(_, d)| !d.is_null()) {
                    let kind = doc["kind"].as_str();
                    if doc["apiVersion"].as_str().is_none() || kind.is_none() {
                        failures.push(format!(
                            "deploy/{name}, document {index}: no apiVersion or kind"
                        ));
                    }
                    if !matches!(kind, Some("Kustomization" | "Component"))
                        && doc["metadata"]["name"].as_str().is_none()
                    {
                        failures.push(format!("deploy/{name}, document {index}: no metadata.name"));
                    }
                }
            }
            Ok(_) => {}
        }
    }
    assert!(
        failures.is_empty(),
        "YAML under deploy/ that does not parse or is incomplete:\n{}",
        failures.join("\n")
    );
}

// ---------------------------------------------------------------- kustomize

#[test]
fn kustomization_lists_exactly_the_resource_files_in_base() {
    let base = deploy_dir().join("k8s/base");
    let docs = parse(&base.join("kustomization.yaml")).expect("kustomization.yaml parses");
    let kustomization = &docs[0];
    assert_eq!(
        kustomization["kind"].as_str(),
        Some("Kustomization"),
        "deploy/k8s/base/kustomization.yaml is not a Kustomization"
    );
    let listed: Vec<String> = kustomization["resources"]
        .as_vec()
        .expect("kustomization.yaml has a `resources` list")
        .iter()
        .map(|r| {
            r.as_str()
                .expect("each kustomization resource is a string")
                .to_owned()
        })
        .collect();
    let listed_set: BTreeSet<String> = listed.iter().cloned().collect();
    assert_eq!(
        listed.len(),
        listed_set.len(),
        "kustomization.yaml lists a resource twice: {listed:?}"
    );
    for resource in &listed {
        assert!(
            base.join(resource).is_file(),
            "kustomization.yaml lists {resource}, which is not a file in deploy/k8s/base/"
        );
    }
    let present: BTreeSet<String> = yaml_paths(&base)
        .iter()
        .map(|p| {
            p.strip_prefix(&base)
                .expect("under base/")
                .to_string_lossy()
                .replace('\\', "/")
        })
        .filter(|name| name != "kustomization.yaml")
        .collect();
    assert_eq!(
        listed_set, present,
        "kustomization.yaml `resources` must list exactly the YAML files in deploy/k8s/base/ \
         (left: listed, right: present)"
    );

    // Namespace-agnostic: the namespace is chosen at apply time.
    assert!(
        kustomization["namespace"].is_badvalue(),
        "the base kustomization must not set a namespace"
    );
    for object in k8s_objects() {
        assert!(
            object.doc["metadata"]["namespace"].is_badvalue(),
            "{} sets metadata.namespace; the base is namespace-agnostic",
            object.id()
        );
        assert_ne!(
            object.kind(),
            "Namespace",
            "{}: the base must not create a namespace",
            object.id()
        );
    }
}

// ---------------------------------------------------------------- Deployments

#[test]
fn deployments_probe_their_grpc_listen_port_with_native_grpc_probes() {
    let objects = k8s_objects();
    let deployments = of_kind(&objects, "Deployment");
    let names: BTreeSet<&str> = deployments.iter().map(|d| d.name()).collect();
    assert_eq!(
        names,
        BTreeSet::from([CRYPTO, REGISTRY]),
        "the base must hold one Deployment per service"
    );
    for deployment in deployments {
        let id = deployment.id();
        let spec = &deployment.doc["spec"];
        let replicas = spec["replicas"].as_i64().unwrap_or(1);
        assert!(replicas >= 2, "{id}: {replicas} replica(s), want 2 or more");

        let pod_labels = deployment.pod_labels();
        assert_eq!(
            pod_labels.get(NAME_LABEL).map(String::as_str),
            Some(deployment.name()),
            "{id}: pod label {NAME_LABEL} must be the Deployment's name"
        );
        assert_eq!(
            pod_labels.get(PART_OF_LABEL).map(String::as_str),
            Some("agentregistry"),
            "{id}: pod label {PART_OF_LABEL} must be agentregistry"
        );
        let selector = label_selector(&spec["selector"], &id);
        assert!(
            !selector.is_empty() && selects(&selector, &pod_labels),
            "{id}: spec.selector {selector:?} does not select its own pod labels {pod_labels:?}"
        );

        let pod = &spec["template"]["spec"];
        let containers = list(&pod["containers"]);
        assert!(!containers.is_empty(), "{id}: no containers");
        for container in containers {
            let cid = format!("{id}, container {}", str_or(&container["name"], "?"));
            let ports = container_ports(container);
            let (setting, listen_port) = grpc_listen(container, &cid);
            assert!(
                ports.values().any(|p| *p == listen_port),
                "{cid}: {setting} listens on {listen_port}, which is not a declared containerPort \
                 ({ports:?})"
            );
            // Kubelet's gRPC probes are plaintext: with a health-only port
            // they go there (the gRPC port may be TLS).
            let (setting, listen_port) = match health_listen(container, &cid) {
                Some((health, port)) => {
                    assert!(
                        ports.values().any(|p| *p == port),
                        "{cid}: {health} listens on {port}, which is not a declared \
                         containerPort ({ports:?})"
                    );
                    (health, port)
                }
                None => (setting, listen_port),
            };
            if let Some((setting, port)) = metrics_listen(container, &cid) {
                assert!(
                    ports.values().any(|p| *p == port),
                    "{cid}: {setting} listens on {port}, which is not a declared containerPort \
                     ({ports:?})"
                );
            }
            // The startup probe holds the others back until the process
            // answers at all: it asks for liveness, which does not wait for
            // the database or crypto-service.
            for (probe_name, health_service) in [
                ("startupProbe", "liveness"),
                ("livenessProbe", "liveness"),
                ("readinessProbe", ""),
            ] {
                let probe = &container[probe_name];
                assert!(!probe.is_badvalue(), "{cid} has no {probe_name}");
                for other in ["httpGet", "tcpSocket", "exec"] {
                    assert!(
                        probe[other].is_badvalue(),
                        "{cid}: {probe_name} uses {other}; it must be a native grpc probe"
                    );
                }
                let grpc = &probe["grpc"];
                assert!(grpc.is_hash(), "{cid}: {probe_name} is not a grpc probe");
                let port = grpc["port"].as_i64().unwrap_or_else(|| {
                    panic!("{cid}: {probe_name}.grpc.port must be a number (grpc probes take no port names)")
                });
                assert_eq!(
                    port, listen_port,
                    "{cid}: {probe_name}.grpc.port must be the plaintext port from {setting}"
                );
                assert!(
                    ports.values().any(|p| *p == port),
                    "{cid}: {probe_name}.grpc.port {port} is not a declared containerPort ({ports:?})"
                );
                // An absent `service` asks for "" (the whole server).
                let service = match &grpc["service"] {
                    Yaml::BadValue | Yaml::Null => "",
                    other => other.as_str().unwrap_or_else(|| {
                        panic!("{cid}: {probe_name}.grpc.service must be a string")
                    }),
                };
                assert_eq!(
                    service, health_service,
                    "{cid}: {probe_name} must ask the health service for {health_service:?}"
                );
            }
            let startup = &container["startupProbe"];
            let patience = startup["periodSeconds"].as_i64().unwrap_or(10)
                * startup["failureThreshold"].as_i64().unwrap_or(3);
            assert!(
                patience >= 30,
                "{cid}: the startupProbe gives up after {patience} s; allow at least 30 s"
            );

            // SIGTERM flips readiness, then in-flight calls drain: the
            // preStop pause and the drain must end before the SIGKILL.
            let grace = pod["terminationGracePeriodSeconds"].as_i64().unwrap_or(30);
            let pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
                .as_i64()
                .unwrap_or(0);
            let drain = env_literal(container)
                .into_iter()
                .find(|(name, _)| name.ends_with("_DRAIN_SECONDS"))
                .map(|(name, value)| {
                    value.parse::<i64>().unwrap_or_else(|_| {
                        panic!("{cid}: {name}={value} is not a number of seconds")
                    })
                });
            let drain = drain.unwrap_or_else(|| panic!("{cid}: no *_DRAIN_SECONDS setting"));
            assert!(
                pause + drain < grace,
                "{cid}: preStop sleep {pause} s + drain {drain} s must end before \
                 terminationGracePeriodSeconds {grace}"
            );
        }

        // A PodDisruptionBudget keeps one pod through voluntary disruptions.
        let budgets: Vec<&Object> = of_kind(&objects, "PodDisruptionBudget")
            .into_iter()
            .filter(|pdb| {
                selects(
                    &label_selector(&pdb.doc["spec"]["selector"], &pdb.id()),
                    &pod_labels,
                )
            })
            .collect();
        assert_eq!(
            budgets.len(),
            1,
            "{id}: want exactly one PodDisruptionBudget selecting its pods"
        );
        let min_available = budgets[0].doc["spec"]["minAvailable"].as_i64();
        assert!(
            matches!(min_available, Some(n) if n >= 1 && n < replicas),
            "{}: minAvailable must be a number from 1 to replicas - 1 ({replicas}), is {min_available:?}",
            budgets[0].id()
        );
    }
}

#[test]
fn the_registry_serves_tls_or_states_a_mesh_and_names_its_token_audience_and_issuer() {
    let objects = k8s_objects();
    let deployment = object(&objects, "Deployment", REGISTRY);
    let pod = &deployment.pod_template().expect("a Deployment")["spec"];
    let secret_volumes: BTreeSet<&str> = list(&pod["volumes"])
        .iter()
        .filter(|v| v["secret"]["secretName"].as_str().is_some())
        .filter_map(|v| v["name"].as_str())
        .collect();
    let container = deployment.containers()[0];
    let in_secret_volume = |path: &str| {
        list(&container["volumeMounts"]).into_iter().any(|m| {
            let dir = str_or(&m["mountPath"], "\0");
            secret_volumes.contains(str_or(&m["name"], ""))
                && path.starts_with(&format!("{}/", dir.trim_end_matches('/')))
        })
    };
    let env: BTreeMap<String, Option<String>> = env_literal(container)
        .into_iter()
        .map(|(k, v)| (k, Some(v)))
        .collect();
    let mut failures = check_registry_transport(&deployment.id(), &env, &in_secret_volume);
    let (_, grpc_port) = grpc_listen(container, &deployment.id());
    if env.contains_key("REGISTRY_TLS_CERT_FILE") {
        for probe in ["readinessProbe", "livenessProbe"] {
            if container[probe]["grpc"]["port"].as_i64() == Some(grpc_port) {
                failures.push(format!(
                    "{}: {probe} asks the TLS port; kubelet's gRPC probes are plaintext",
                    deployment.id()
                ));
            }
        }
    }

    let compose = compose();
    let service = compose_service(&compose, REGISTRY);
    let mounts = compose_secret_mounts(service);
    failures.extend(check_registry_transport(
        "compose registry-service",
        &compose_env(service),
        &|path: &str| mounts.contains_key(path),
    ));
    assert!(
        failures.is_empty(),
        "the registry's transport or token settings:\n{}",
        failures.join("\n")
    );
}

/// The registry's settings in one deployment file: off loopback, TLS from
/// mounted secret files (with a plaintext health port for probes) or the
/// mesh flag; never development mode; a token audience and issuer.
fn check_registry_transport(
    owner: &str,
    env: &BTreeMap<String, Option<String>>,
    mounted: &dyn Fn(&str) -> bool,
) -> Vec<String> {
    let value = |name: &str| env.get(name).cloned().flatten().unwrap_or_default();
    let mut failures = Vec::new();
    let listen = value("REGISTRY_LISTEN");
    let loopback = listen.starts_with("127.") || listen.starts_with("[::1]");
    let tls = ["REGISTRY_TLS_CERT_FILE", "REGISTRY_TLS_KEY_FILE"].map(value);
    let mesh = value("REGISTRY_MESH_MTLS") == "true";
    match (&tls, mesh) {
        ([cert, key], _) if !cert.is_empty() && !key.is_empty() => {
            for (setting, path) in [
                ("REGISTRY_TLS_CERT_FILE", cert),
                ("REGISTRY_TLS_KEY_FILE", key),
            ] {
                if !mounted(path) {
                    failures.push(format!(
                        "{owner}: {setting}={path} is not a mounted secret file"
                    ));
                }
            }
            if value("REGISTRY_HEALTH_LISTEN").is_empty() {
                failures.push(format!(
                    "{owner}: TLS on the gRPC port needs REGISTRY_HEALTH_LISTEN for plaintext probes"
                ));
            }
        }
        ([cert, key], _) if !cert.is_empty() || !key.is_empty() => failures.push(format!(
            "{owner}: REGISTRY_TLS_CERT_FILE and REGISTRY_TLS_KEY_FILE go together"
        )),
        (_, true) => {}
        _ if loopback => {}
        _ => failures.push(format!(
            "{owner}: REGISTRY_LISTEN={listen} in plaintext: set REGISTRY_TLS_CERT_FILE and \
             REGISTRY_TLS_KEY_FILE, or REGISTRY_MESH_MTLS=true behind a mesh (the registry \
             refuses to start otherwise)"
        )),
    }
    if !matches!(value("REGISTRY_DEV").as_str(), "" | "false") {
        failures.push(format!("{owner}: REGISTRY_DEV is for development only"));
    }
    for setting in ["JWT_AUDIENCE", "JWT_ISSUER"] {
        if value(setting).is_empty() {
            failures.push(format!(
                "{owner}: {setting} is required (the registry refuses to start without it)"
            ));
        }
    }
    failures
}

#[test]
fn services_target_their_deployments_and_the_registry_finds_crypto() {
    let objects = k8s_objects();
    let workloads: Vec<&Object> = objects
        .iter()
        .filter(|o| o.pod_template().is_some())
        .collect();
    let services = of_kind(&objects, "Service");
    assert!(!services.is_empty(), "the base defines no Service");
    for service in &services {
        let id = service.id();
        let selector = string_map(&service.doc["spec"]["selector"]);
        assert!(!selector.is_empty(), "{id} has no selector");
        let selected: Vec<&&Object> = workloads
            .iter()
            .filter(|w| selects(&selector, &w.pod_labels()))
            .collect();
        assert_eq!(
            selected.iter().map(|w| w.id()).collect::<Vec<_>>(),
            vec![object(&objects, "Deployment", service.name()).id()],
            "{id} must select the pods of the Deployment of the same name, and nothing else"
        );
        let deployment = selected[0];
        let containers = deployment.containers();
        let ports = list(&service.doc["spec"]["ports"]);
        assert!(!ports.is_empty(), "{id} has no ports");
        for port in ports {
            let number = port["port"]
                .as_i64()
                .unwrap_or_else(|| panic!("{id}: a port without a number"));
            let target = &port["targetPort"];
            assert!(
                resolve_target_port(target, number, &containers).is_some(),
                "{id}: port {number} targets {target:?}, which no container of {} declares \
                 (container ports: {:?})",
                deployment.id(),
                containers
                    .iter()
                    .map(|c| container_ports(c))
                    .collect::<Vec<_>>()
            );
        }
    }

    // The registry's CRYPTO_ENDPOINT names the crypto Service and a port of
    // it that leads to crypto-service's gRPC listener.
    let registry = object(&objects, "Deployment", REGISTRY);
    let endpoint = registry
        .containers()
        .iter()
        .find_map(|c| env_literal(c).remove("CRYPTO_ENDPOINT"))
        .expect("registry-service sets CRYPTO_ENDPOINT");
    let (scheme, host, port) = split_endpoint(&endpoint);
    assert!(
        scheme == "http" || scheme == "https",
        "CRYPTO_ENDPOINT {endpoint}: want http:// (mesh) or https:// (TLS)"
    );
    assert_eq!(
        host, CRYPTO,
        "CRYPTO_ENDPOINT {endpoint} must name the crypto-service Service"
    );
    let crypto_service = object(&objects, "Service", &host);
    let service_port = list(&crypto_service.doc["spec"]["ports"])
        .into_iter()
        .find(|p| p["port"].as_i64() == Some(port))
        .unwrap_or_else(|| {
            panic!("CRYPTO_ENDPOINT {endpoint}: the {CRYPTO} Service has no port {port}",)
        });
    let crypto = object(&objects, "Deployment", CRYPTO);
    let crypto_containers = crypto.containers();
    let (setting, crypto_grpc) = grpc_listen(crypto_containers[0], &crypto.id());
    assert_eq!(
        resolve_target_port(&service_port["targetPort"], port, &crypto_containers),
        Some(crypto_grpc),
        "CRYPTO_ENDPOINT {endpoint}: Service port {port} must lead to crypto-service's {setting} port"
    );
    assert_eq!(
        port, crypto_grpc,
        "the crypto-service Service port in CRYPTO_ENDPOINT should equal its listen port"
    );
}

#[test]
fn network_policy_admits_only_registry_pods_to_the_crypto_grpc_port() {
    let objects = k8s_objects();
    let crypto = object(&objects, "Deployment", CRYPTO);
    let crypto_labels = crypto.pod_labels();
    let registry_labels = object(&objects, "Deployment", REGISTRY).pod_labels();
    let crypto_containers = crypto.containers();
    let (_, grpc_port) = grpc_listen(crypto_containers[0], &crypto.id());
    let port_names: BTreeMap<String, i64> = crypto_containers
        .iter()
        .flat_map(|c| container_ports(c))
        .filter_map(|(name, port)| name.map(|n| (n, port)))
        .collect();
    // Every other pod in the base (the migration Job, the registry's own
    // pods as seen from crypto) must stay outside the gRPC rule.
    let others: Vec<(String, BTreeMap<String, String>)> = objects
        .iter()
        .filter(|o| o.pod_template().is_some() && o.name() != REGISTRY)
        .map(|o| (o.id(), o.pod_labels()))
        .collect();

    let policies: Vec<&Object> = of_kind(&objects, "NetworkPolicy")
        .into_iter()
        .filter(|p| {
            selects(
                &label_selector(&p.doc["spec"]["podSelector"], &p.id()),
                &crypto_labels,
            )
        })
        .collect();
    assert!(
        !policies.is_empty(),
        "no NetworkPolicy's podSelector matches crypto-service's pod labels {crypto_labels:?}"
    );

    let mut registry_admitted = false;
    for policy in policies {
        let id = policy.id();
        let spec = &policy.doc["spec"];
        let types: Vec<&str> = list(&spec["policyTypes"])
            .iter()
            .filter_map(|t| t.as_str())
            .collect();
        assert!(
            types.contains(&"Ingress"),
            "{id}: policyTypes {types:?} must include Ingress"
        );
        for (index, rule) in list(&spec["ingress"]).into_iter().enumerate() {
            let rule_id = format!("{id}, ingress rule {index}");
            let port_entries = list(&rule["ports"]);
            let covers_grpc = port_entries.is_empty()
                || port_entries.iter().any(|p| {
                    covers_port(p, grpc_port, &port_names)
                        && p["protocol"].as_str().unwrap_or("TCP") == "TCP"
                });
            if !covers_grpc {
                continue;
            }
            let peers = list(&rule["from"]);
            assert!(
                !peers.is_empty(),
                "{rule_id} admits every source to crypto's gRPC port {grpc_port}"
            );
            for peer in peers {
                assert!(
                    peer["ipBlock"].is_badvalue() && peer["namespaceSelector"].is_badvalue(),
                    "{rule_id}: crypto's gRPC port must be reachable only by registry pods of the \
                     same namespace (a podSelector alone), not {peer:?}"
                );
                let selector = label_selector(&peer["podSelector"], &rule_id);
                assert!(
                    !selector.is_empty(),
                    "{rule_id}: an empty podSelector admits every pod of the namespace"
                );
                assert!(
                    selects(&selector, &registry_labels),
                    "{rule_id}: `from` podSelector {selector:?} does not match the registry's pod \
                     labels {registry_labels:?}"
                );
                for (other, labels) in &others {
                    assert!(
                        !selects(&selector, labels),
                        "{rule_id}: `from` podSelector {selector:?} also admits {other}"
                    );
                }
                registry_admitted = true;
            }
        }
    }
    assert!(
        registry_admitted,
        "no NetworkPolicy rule admits registry pods to crypto's gRPC port {grpc_port}"
    );
}

#[test]
fn network_policies_admit_what_each_workload_serves_and_let_out_only_what_it_calls() {
    check_network_policies(&k8s_objects(), &[]);
}

#[test]
fn service_ports_name_their_application_protocol() {
    let objects = k8s_objects();
    for service in of_kind(&objects, "Service") {
        let deployment = object(&objects, "Deployment", service.name());
        let containers = deployment.containers();
        let container = containers[0];
        let cid = deployment.id();
        let (_, grpc_port) = grpc_listen(container, &cid);
        let metrics_port = metrics_listen(container, &cid).map(|(_, port)| port);
        // The registry terminates TLS itself unless a mesh does it.
        let own_tls = env_literal(container).contains_key("REGISTRY_TLS_CERT_FILE");
        for port in list(&service.doc["spec"]["ports"]) {
            let number = port["port"].as_i64().unwrap_or_default();
            let target = resolve_target_port(&port["targetPort"], number, &containers);
            let want = if target == Some(grpc_port) {
                // gRPC inside TLS is HTTP/2 over TLS: a proxy that took it
                // for plaintext gRPC would break the handshake.
                if own_tls { "https" } else { "grpc" }
            } else if target.is_some() && target == metrics_port {
                "http"
            } else {
                panic!(
                    "{}: port {number} leads to neither gRPC nor metrics",
                    service.id()
                )
            };
            assert_eq!(
                port["appProtocol"].as_str(),
                Some(want),
                "{}: port {number} must carry appProtocol {want}",
                service.id()
            );
        }
    }
}

#[test]
fn the_migration_job_runs_without_a_mesh_sidecar() {
    let objects = k8s_objects();
    for job in of_kind(&objects, "Job") {
        let annotations =
            string_map(&job.pod_template().expect("a Job")["metadata"]["annotations"]);
        assert_eq!(
            annotations
                .get("sidecar.istio.io/inject")
                .map(String::as_str),
            Some("false"),
            "{}: an injected sidecar keeps running after the migration exits, so the Job \
             never completes: annotate its pods sidecar.istio.io/inject: \"false\"",
            job.id()
        );
    }
}

/// The NetworkPolicies in `objects` (the base, or a rendered overlay whose
/// sidecars may also reach `mesh_ports`): every workload's pods are
/// selected for Ingress and Egress; the registry admits its gRPC port from
/// the whole cluster, its health port from anywhere (kubelet) and metrics
/// from monitoring namespaces only; egress goes only where each workload's
/// settings point.
fn check_network_policies(objects: &[Object], mesh_ports: &[i64]) {
    const DNS: i64 = 53;
    const POSTGRES: i64 = 5432;
    let registry = object(objects, "Deployment", REGISTRY);
    let crypto = object(objects, "Deployment", CRYPTO);
    let registry_container = registry.containers()[0];
    let crypto_container = crypto.containers()[0];
    let (_, crypto_grpc) = grpc_listen(crypto_container, &crypto.id());
    let otlp_port = |container: &Yaml| {
        env_literal(container)
            .get("OTEL_EXPORTER_OTLP_ENDPOINT")
            .map(|endpoint| split_endpoint(endpoint).2)
    };
    let crypto_labels = crypto.pod_labels();

    for workload in objects.iter().filter(|o| o.pod_template().is_some()) {
        let id = workload.id();
        let labels = workload.pod_labels();
        let policies: Vec<&Object> = of_kind(objects, "NetworkPolicy")
            .into_iter()
            .filter(|p| {
                selects(
                    &label_selector(&p.doc["spec"]["podSelector"], &p.id()),
                    &labels,
                )
            })
            .collect();
        for direction in ["Ingress", "Egress"] {
            assert!(
                policies.iter().any(|p| list(&p.doc["spec"]["policyTypes"])
                    .iter()
                    .any(|t| t.as_str() == Some(direction))),
                "{id}: no NetworkPolicy restricts its {direction}"
            );
        }

        // Egress: (port, protocol, peers) of every rule.
        let mut egress: Vec<(i64, String, Vec<&Yaml>)> = Vec::new();
        for policy in &policies {
            for rule in list(&policy.doc["spec"]["egress"]) {
                let ports = list(&rule["ports"]);
                assert!(
                    !ports.is_empty(),
                    "{}: an egress rule without ports lets {id} out on every port",
                    policy.id()
                );
                for entry in ports {
                    let port = entry["port"]
                        .as_i64()
                        .unwrap_or_else(|| panic!("{}: egress ports must be numbers", policy.id()));
                    let protocol = str_or(&entry["protocol"], "TCP").to_owned();
                    egress.push((port, protocol, list(&rule["to"])));
                }
            }
        }
        let container = workload.containers()[0];
        let mut allowed: BTreeSet<i64> = BTreeSet::from([DNS]);
        allowed.extend(otlp_port(container));
        allowed.extend(
            mesh_ports
                .iter()
                .filter(|_| workload.kind() == "Deployment"),
        );
        let mut needed = vec![DNS];
        match workload.name() {
            REGISTRY => {
                allowed.extend([crypto_grpc, POSTGRES]);
                needed.extend([crypto_grpc, POSTGRES]);
            }
            CRYPTO => {}
            _ => {
                // The migration Job: the database, never crypto-service.
                allowed.insert(POSTGRES);
                needed.push(POSTGRES);
            }
        }
        for (port, protocol, peers) in &egress {
            assert!(
                allowed.contains(port),
                "{id} may connect out on {protocol} {port}; it needs only {allowed:?}"
            );
            if *port == crypto_grpc {
                for peer in peers {
                    let selector = label_selector(&peer["podSelector"], &id);
                    assert!(
                        peer["namespaceSelector"].is_badvalue()
                            && !selector.is_empty()
                            && selects(&selector, &crypto_labels),
                        "{id}: egress on {crypto_grpc} must go to crypto-service's pods only"
                    );
                }
                assert!(
                    !peers.is_empty(),
                    "{id}: egress on {crypto_grpc} to anywhere"
                );
            }
        }
        for port in needed {
            assert!(
                egress.iter().any(|(p, _, _)| *p == port),
                "{id}: no egress rule lets it reach port {port}"
            );
        }
        assert!(
            egress
                .iter()
                .any(|(p, proto, _)| *p == DNS && proto == "UDP"),
            "{id}: DNS over UDP is not allowed out"
        );
    }

    // The registry's ingress, by the ports its settings name.
    let cid = registry.id();
    let (_, grpc_port) = grpc_listen(registry_container, &cid);
    let (_, health_port) =
        health_listen(registry_container, &cid).expect("the registry has a health port");
    let (_, metrics_port) =
        metrics_listen(registry_container, &cid).expect("the registry serves metrics");
    let names: BTreeMap<String, i64> = container_ports(registry_container)
        .into_iter()
        .filter_map(|(name, port)| Some((name?, port)))
        .collect();
    let rules: Vec<Yaml> = of_kind(objects, "NetworkPolicy")
        .into_iter()
        .filter(|p| {
            selects(
                &label_selector(&p.doc["spec"]["podSelector"], &p.id()),
                &registry.pod_labels(),
            )
        })
        .flat_map(|p| list(&p.doc["spec"]["ingress"]).into_iter().cloned())
        .collect();
    let admitting = |port: i64| -> Vec<&Yaml> {
        rules
            .iter()
            .filter(|rule| {
                let ports = list(&rule["ports"]);
                ports.is_empty() || ports.iter().any(|e| covers_port(e, port, &names))
            })
            .collect()
    };
    let grpc_rules = admitting(grpc_port);
    assert!(
        grpc_rules.iter().any(|rule| list(&rule["from"]).iter().any(
            |peer| peer["namespaceSelector"]
                .as_hash()
                .is_some_and(|h| h.is_empty())
                && peer["podSelector"].is_badvalue()
        )),
        "{cid}: its gRPC port {grpc_port} must be open to every pod of the cluster \
         (namespaceSelector: {{}})"
    );
    assert!(
        admitting(health_port)
            .iter()
            .any(|rule| rule["from"].is_badvalue()),
        "{cid}: its health port {health_port} must be open to kubelet's probes (no `from`)"
    );
    let metrics_rules = admitting(metrics_port);
    assert!(
        !metrics_rules.is_empty(),
        "{cid}: metrics port {metrics_port} is closed"
    );
    for rule in metrics_rules {
        let peers = list(&rule["from"]);
        assert!(
            !peers.is_empty()
                && peers
                    .iter()
                    .all(|peer| { !label_selector(&peer["namespaceSelector"], &cid).is_empty() }),
            "{cid}: its metrics port {metrics_port} must be open only to labelled \
             (monitoring) namespaces, not {rule:?}"
        );
    }
}

// ---------------------------------------------------------------- pod security

#[test]
fn no_container_can_run_as_root_or_write_its_root_file_system() {
    let objects = k8s_objects();
    let workloads: Vec<&Object> = objects
        .iter()
        .filter(|o| o.pod_template().is_some())
        .collect();
    assert!(
        workloads.iter().any(|w| w.kind() == "Job"),
        "the base must hold the migration Job"
    );
    let mut failures = Vec::new();
    for workload in workloads {
        let pod = &workload.pod_template().expect("a workload")["spec"];
        let pod_context = &pod["securityContext"];
        for flag in ["hostNetwork", "hostPID", "hostIPC"] {
            if pod[flag].as_bool() == Some(true) {
                failures.push(format!("{}: {flag} is true", workload.id()));
            }
        }
        for container in workload.containers() {
            let cid = format!(
                "{}, container {}",
                workload.id(),
                str_or(&container["name"], "?")
            );
            let context = &container["securityContext"];
            // Container settings override the pod's.
            let effective = |key: &str| -> &Yaml {
                if context[key].is_badvalue() {
                    &pod_context[key]
                } else {
                    &context[key]
                }
            };
            if effective("runAsNonRoot").as_bool() != Some(true) {
                failures.push(format!("{cid}: runAsNonRoot is not true"));
            }
            match effective("runAsUser").as_i64() {
                Some(0) => failures.push(format!("{cid}: runAsUser is 0 (root)")),
                None => failures.push(format!(
                    "{cid}: no runAsUser: set a numeric non-root user (the image's USER is not checked here)"
                )),
                Some(_) => {}
            }
            if effective("runAsGroup").as_i64() == Some(0) {
                failures.push(format!("{cid}: runAsGroup is 0 (root)"));
            }
            if context["readOnlyRootFilesystem"].as_bool() != Some(true) {
                failures.push(format!("{cid}: readOnlyRootFilesystem is not true"));
            }
            if context["allowPrivilegeEscalation"].as_bool() != Some(false) {
                failures.push(format!("{cid}: allowPrivilegeEscalation is not false"));
            }
            if context["privileged"].as_bool() == Some(true) {
                failures.push(format!("{cid}: privileged"));
            }
            let dropped: Vec<&str> = list(&context["capabilities"]["drop"])
                .iter()
                .filter_map(|c| c.as_str())
                .collect();
            if !dropped.contains(&"ALL") {
                failures.push(format!("{cid}: capabilities.drop does not include ALL"));
            }
            if !list(&context["capabilities"]["add"]).is_empty() {
                failures.push(format!("{cid}: adds capabilities"));
            }
            let seccomp = effective("seccompProfile")["type"].as_str();
            if !matches!(seccomp, Some("RuntimeDefault" | "Localhost")) {
                failures.push(format!(
                    "{cid}: seccompProfile.type is {seccomp:?}, want RuntimeDefault"
                ));
            }
            for (kind, resource) in [
                ("requests", "cpu"),
                ("requests", "memory"),
                ("limits", "cpu"),
                ("limits", "memory"),
            ] {
                if scalar(&container["resources"][kind][resource]).is_none() {
                    failures.push(format!("{cid}: no resources.{kind}.{resource}"));
                }
            }
            let image = str_or(&container["image"], "");
            let last_part = image.rsplit_once('/').map_or(image, |(_, t)| t);
            let pinned = last_part.contains(':') || image.contains('@');
            if !pinned || last_part.ends_with(":latest") {
                failures.push(format!(
                    "{cid}: image {image:?} must carry a version tag (or digest), not latest"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "containers that could run as root or are not locked down:\n{}",
        failures.join("\n")
    );
}

#[test]
fn kubernetes_env_values_labels_and_annotations_are_strings() {
    // The API server rejects numbers and booleans there; YAML makes them
    // out of an unquoted `20` or `true`.
    let mut failures = Vec::new();
    let every_object = ["k8s/base", "k8s/istio", "k8s/monitoring"]
        .into_iter()
        .flat_map(objects_under);
    for object in every_object {
        let mut maps = vec![
            ("labels", &object.doc["metadata"]["labels"]),
            ("annotations", &object.doc["metadata"]["annotations"]),
        ];
        if let Some(template) = object.pod_template() {
            maps.push(("pod labels", &template["metadata"]["labels"]));
            maps.push(("pod annotations", &template["metadata"]["annotations"]));
        }
        for (what, map) in maps {
            for (key, value) in map.as_hash().into_iter().flatten() {
                if value.as_str().is_none() {
                    failures.push(format!("{}: {what} {key:?} = {value:?}", object.id()));
                }
            }
        }
        for container in object.containers() {
            for entry in list(&container["env"]) {
                let value = &entry["value"];
                if !value.is_badvalue() && value.as_str().is_none() {
                    failures.push(format!(
                        "{}: env {} = {value:?}",
                        object.id(),
                        str_or(&entry["name"], "?")
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "values that must be quoted strings:\n{}",
        failures.join("\n")
    );
}

// ---------------------------------------------------------------- secrets

#[test]
fn no_secret_value_is_written_in_any_deploy_file() {
    let mut failures = Vec::new();

    // Nothing anywhere looks like PEM key material.
    for path in yaml_paths(&deploy_dir()) {
        let docs = parse(&path).expect("parses (checked by its own test)");
        for doc in &docs {
            walk_strings(doc, &mut |text| {
                if text.contains("-----BEGIN") || text.contains("PRIVATE KEY") {
                    failures.push(format!(
                        "deploy/{}: PEM material in a value",
                        relative(&path)
                    ));
                }
            });
            // A Secret may be declared only without values (it is created
            // from files by the operator).
            if doc["kind"].as_str() == Some("Secret") {
                for field in ["data", "stringData"] {
                    if doc[field].as_hash().is_some_and(|h| !h.is_empty()) {
                        failures.push(format!(
                            "deploy/{}: Secret {} holds {field} values",
                            relative(&path),
                            str_or(&doc["metadata"]["name"], "?")
                        ));
                    }
                }
            }
        }
    }

    // Kubernetes: literal env values, in the base and the overlays' patches.
    let objects = k8s_objects();
    for object in objects.iter().chain(&objects_under("k8s/istio")) {
        for container in object.containers() {
            let cid = format!(
                "{}, container {}",
                object.id(),
                str_or(&container["name"], "?")
            );
            for entry in list(&container["env"]) {
                let name = str_or(&entry["name"], "?");
                if let Some(value) = scalar(&entry["value"]) {
                    check_literal(&cid, name, &value, &mut failures);
                }
                if name == "DATABASE_URL"
                    && entry["valueFrom"]["secretKeyRef"]["name"]
                        .as_str()
                        .is_none()
                {
                    failures.push(format!(
                        "{cid}: DATABASE_URL must come from a Secret (valueFrom.secretKeyRef)"
                    ));
                }
            }
        }
    }
    // The key and the JWT secret arrive as mounted Secret files.
    for (deployment, settings) in [
        (CRYPTO, KEY_FILE_SETTINGS),
        (
            REGISTRY,
            &[
                "JWT_HS256_SECRET_FILE",
                "JWT_JWKS_FILE",
                "JWT_PUBLIC_KEY_FILE",
            ][..],
        ),
    ] {
        let workload = object(&objects, "Deployment", deployment);
        let pod = &workload.pod_template().expect("a Deployment")["spec"];
        let secret_volumes: BTreeSet<&str> = list(&pod["volumes"])
            .iter()
            .filter(|v| v["secret"]["secretName"].as_str().is_some())
            .filter_map(|v| v["name"].as_str())
            .collect();
        let container = workload.containers()[0];
        let env = env_literal(container);
        let found: Vec<(&str, &String)> = settings
            .iter()
            .filter_map(|s| env.get(*s).map(|v| (*s, v)))
            .collect();
        assert_eq!(
            found.len(),
            1,
            "{}: want exactly one of {settings:?}",
            workload.id()
        );
        let (setting, path) = found[0];
        let mounted = list(&container["volumeMounts"]).into_iter().any(|m| {
            let dir = str_or(&m["mountPath"], "\0");
            secret_volumes.contains(str_or(&m["name"], ""))
                && path.starts_with(&format!("{}/", dir.trim_end_matches('/')))
        });
        assert!(
            mounted,
            "{}: {setting}={path} is not inside a mounted Secret volume",
            workload.id()
        );
    }

    // Compose: literal environment values, and secrets from files only.
    let compose = compose();
    for (service, definition) in compose_services(&compose) {
        for (name, value) in compose_env(definition) {
            if let Some(value) = value {
                check_literal(
                    &format!("compose service {service}"),
                    &name,
                    &value,
                    &mut failures,
                );
            }
        }
    }
    for (name, secret) in compose["secrets"].as_hash().into_iter().flatten() {
        let name = str_or(name, "?");
        match secret["file"].as_str() {
            Some(file) if file.starts_with("./secrets/") => {}
            other => failures.push(format!(
                "compose secret {name}: must come from a file under ./secrets/ (not committed), is {other:?}"
            )),
        }
    }
    let crypto_env = compose_env(compose_service(&compose, CRYPTO));
    let key_files: Vec<&str> = KEY_FILE_SETTINGS
        .iter()
        .copied()
        .filter(|s| crypto_env.contains_key(*s))
        .collect();
    let crypto_secrets = compose_secret_mounts(compose_service(&compose, CRYPTO));
    match key_files.as_slice() {
        [setting] => {
            let path = crypto_env[*setting].clone().unwrap_or_default();
            if !crypto_secrets.contains_key(&path) {
                failures.push(format!(
                    "compose crypto-service: {setting}={path} is not one of its mounted secrets {crypto_secrets:?}"
                ));
            }
        }
        other => failures.push(format!(
            "compose crypto-service: want its key material from one compose secret through one of \
             {KEY_FILE_SETTINGS:?}, found {other:?}"
        )),
    }

    // The secret files themselves stay out of git.
    let secrets_dir = deploy_dir().join("secrets");
    let ignore = fs::read_to_string(secrets_dir.join(".gitignore"))
        .expect("deploy/secrets/.gitignore exists");
    let rules: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(
        rules.first(),
        Some(&"*"),
        "deploy/secrets/.gitignore must ignore everything first"
    );
    for rule in &rules[1..] {
        assert!(
            matches!(*rule, "!.gitignore" | "!README.md"),
            "deploy/secrets/.gitignore may re-include only itself and README.md, not {rule}"
        );
    }
    assert!(
        secrets_dir.join("README.md").is_file(),
        "deploy/secrets/README.md must say how to create the secret files"
    );

    assert!(
        failures.is_empty(),
        "secret values written in deploy files:\n{}",
        failures.join("\n")
    );
}

// ---------------------------------------------------------------- compose

#[test]
fn compose_wires_registry_crypto_postgres_and_the_collector_together() {
    let compose = compose();
    let services: BTreeMap<&str, &Yaml> = compose_services(&compose).into_iter().collect();
    for expected in ["postgres", CRYPTO, REGISTRY, "otel-collector"] {
        assert!(
            services.contains_key(expected),
            "compose.yaml has no service {expected}; it has {:?}",
            services.keys()
        );
    }
    let declared_secrets: BTreeSet<&str> = compose["secrets"]
        .as_hash()
        .into_iter()
        .flatten()
        .filter_map(|(k, _)| k.as_str())
        .collect();
    let declared_volumes: BTreeSet<&str> = compose["volumes"]
        .as_hash()
        .into_iter()
        .flatten()
        .filter_map(|(k, _)| k.as_str())
        .collect();
    let stages = dockerfile_stages();

    for (name, service) in &services {
        let env = compose_env(service);
        let mounts = compose_secret_mounts(service);
        for secret in mounts.values() {
            assert!(
                declared_secrets.contains(secret.as_str()),
                "compose service {name} uses secret {secret}, which is not declared under \
                 top-level `secrets:` ({declared_secrets:?})"
            );
        }
        for (setting, value) in &env {
            if let Some(path) = value.as_deref().filter(|v| v.starts_with("/run/secrets/")) {
                assert!(
                    mounts.contains_key(path),
                    "compose service {name}: {setting}={path} is not one of its secrets {mounts:?}"
                );
            }
        }
        for dependency in compose_depends_on(service).keys() {
            assert!(
                services.contains_key(dependency.as_str()),
                "compose service {name} depends on {dependency}, which does not exist"
            );
        }
        for port in list(&service["ports"]) {
            let port = scalar(port).unwrap_or_else(|| format!("{port:?}"));
            assert!(
                port.starts_with("127.0.0.1:"),
                "compose service {name} publishes {port}: publish on 127.0.0.1 only (local use)"
            );
        }
        // Our own images: built from deploy/Dockerfile, locked down.
        if !service["build"].is_badvalue() {
            let build = &service["build"];
            assert_eq!(
                build["dockerfile"].as_str(),
                Some("deploy/Dockerfile"),
                "compose service {name}: build.dockerfile"
            );
            assert_eq!(
                build["context"].as_str(),
                Some(".."),
                "compose service {name}: build.context must be the repository root"
            );
            let target = build["target"]
                .as_str()
                .unwrap_or_else(|| panic!("compose service {name}: no build.target"));
            assert!(
                stages.iter().any(|s| s.name.as_deref() == Some(target)),
                "compose service {name}: build.target {target} is not a stage of deploy/Dockerfile"
            );
            let image = str_or(&service["image"], "");
            assert!(
                image.starts_with(&format!("agentregistry/{target}:")),
                "compose service {name}: image {image:?} should be agentregistry/{target}:TAG"
            );
            assert_eq!(
                service["read_only"].as_bool(),
                Some(true),
                "compose service {name}: read_only must be true"
            );
            let user = scalar(&service["user"])
                .unwrap_or_else(|| panic!("compose service {name}: set user (numeric, non-root)"));
            let uid = user.split(':').next().unwrap_or_default();
            assert!(
                uid.parse::<u32>().is_ok_and(|u| u != 0),
                "compose service {name}: user {user} must be a numeric non-root uid"
            );
            if let Some((setting, drain)) = env
                .iter()
                .find(|(k, _)| k.ends_with("_DRAIN_SECONDS"))
                .map(|(k, v)| (k, v.clone().unwrap_or_default()))
            {
                let drain: u64 = drain.parse().unwrap_or_else(|_| {
                    panic!("compose service {name}: {setting}={drain} is not a number")
                });
                let grace = service["stop_grace_period"].as_str().map_or(10, seconds);
                assert!(
                    drain < grace,
                    "compose service {name}: stop_grace_period ({grace} s) must exceed {setting} ({drain} s)"
                );
            }
        }
    }

    // Compose has no mesh: the registry reaches crypto over a unix socket
    // in a named volume both mount at the same place, and crypto names the
    // registry by its uid.
    let registry_env = compose_env(services[REGISTRY]);
    let crypto_env = compose_env(services[CRYPTO]);
    let endpoint = registry_env
        .get("CRYPTO_ENDPOINT")
        .cloned()
        .flatten()
        .expect("compose registry-service sets CRYPTO_ENDPOINT");
    let crypto_listen = crypto_env
        .get("CRYPTO_LISTEN")
        .cloned()
        .flatten()
        .expect("compose crypto-service sets CRYPTO_LISTEN");
    assert!(
        endpoint.starts_with("unix:/") && endpoint == crypto_listen,
        "compose CRYPTO_ENDPOINT {endpoint} must be crypto-service's unix socket CRYPTO_LISTEN \
         ({crypto_listen})"
    );
    let socket_dir = endpoint
        .trim_start_matches("unix:")
        .rsplit_once('/')
        .map(|(dir, _)| dir.to_owned())
        .unwrap_or_default();
    let volume_at = |service: &Yaml| {
        list(&service["volumes"])
            .into_iter()
            .filter_map(|v| v.as_str())
            .find_map(|v| {
                let (source, target) = v.split_once(':')?;
                (target.trim_end_matches(":ro") == socket_dir).then(|| source.to_owned())
            })
    };
    let crypto_volume = volume_at(services[CRYPTO]);
    assert!(
        crypto_volume.is_some() && crypto_volume == volume_at(services[REGISTRY]),
        "compose crypto-service and registry-service must mount one named volume at {socket_dir}"
    );
    assert!(
        crypto_volume
            .as_deref()
            .is_some_and(|v| declared_volumes.contains(v)),
        "compose: the socket volume {crypto_volume:?} must be declared under top-level `volumes:`"
    );
    let registry_uid = scalar(&services[REGISTRY]["user"])
        .and_then(|user| user.split(':').next().map(str::to_owned))
        .unwrap_or_default();
    let registry_clients = crypto_env
        .get("CRYPTO_REGISTRY_CLIENTS")
        .cloned()
        .flatten()
        .unwrap_or_default();
    assert!(
        registry_clients
            .split(',')
            .any(|entry| entry.trim() == format!("uid:{registry_uid}")),
        "compose crypto-service must name the registry's uid {registry_uid} in \
         CRYPTO_REGISTRY_CLIENTS, has {registry_clients:?}"
    );

    // PostgreSQL: the database the registry names, healthy before use, on a
    // named volume.
    let postgres = services["postgres"];
    assert!(
        str_or(&postgres["image"], "").starts_with("postgres:15"),
        "compose postgres must be PostgreSQL 15"
    );
    assert!(
        !list(&postgres["healthcheck"]["test"]).is_empty(),
        "compose postgres needs a healthcheck"
    );
    let data_volume = list(&postgres["volumes"])
        .into_iter()
        .filter_map(|v| v.as_str())
        .find_map(|v| v.split_once(':').map(|(source, _)| source.to_owned()))
        .expect("compose postgres mounts a volume");
    assert!(
        declared_volumes.contains(data_volume.as_str()),
        "compose postgres volume {data_volume} must be a named volume declared at the top level"
    );
    let database_url = registry_env
        .get("DATABASE_URL")
        .cloned()
        .flatten()
        .expect("compose registry-service sets DATABASE_URL");
    let (scheme, db_host, _) = split_endpoint(&database_url);
    assert!(
        scheme == "postgres" || scheme == "postgresql",
        "compose DATABASE_URL {database_url} must be PostgreSQL"
    );
    assert_eq!(
        db_host, "postgres",
        "compose DATABASE_URL must name the postgres service"
    );

    // Migrations: either a one-shot service the registry waits for, or the
    // registry migrates at start once PostgreSQL is healthy.
    let registry_deps = compose_depends_on(services[REGISTRY]);
    let no_migrate = registry_env
        .get("REGISTRY_NO_MIGRATE")
        .cloned()
        .flatten()
        .is_some_and(|v| v == "true");
    if no_migrate {
        let (migrate, _) = services
            .iter()
            .find(|(_, s)| {
                let command: Vec<String> = match &s["command"] {
                    Yaml::String(text) => text.split_whitespace().map(str::to_owned).collect(),
                    other => list(other).into_iter().filter_map(scalar).collect(),
                };
                command == ["migrate", "up"]
            })
            .expect("REGISTRY_NO_MIGRATE=true needs a service running `migrate up`");
        assert_eq!(
            registry_deps.get(*migrate).cloned().flatten().as_deref(),
            Some("service_completed_successfully"),
            "compose registry-service must wait for {migrate} to complete"
        );
        let migrate_env = compose_env(services[migrate]);
        assert_eq!(
            migrate_env.get("DATABASE_URL"),
            registry_env.get("DATABASE_URL"),
            "compose {migrate} must migrate the registry's database"
        );
        assert_eq!(
            services[migrate]["image"], services[REGISTRY]["image"],
            "compose {migrate} must run the registry's image"
        );
        assert_eq!(
            compose_depends_on(services[migrate])
                .get("postgres")
                .cloned()
                .flatten()
                .as_deref(),
            Some("service_healthy"),
            "compose {migrate} must wait for a healthy postgres"
        );
    } else {
        assert_eq!(
            registry_deps.get("postgres").cloned().flatten().as_deref(),
            Some("service_healthy"),
            "compose registry-service migrates at start: it must wait for a healthy postgres"
        );
    }

    // Traces go to the collector service on the OTLP gRPC port.
    let collector = services["otel-collector"];
    assert!(
        str_or(&collector["image"], "").starts_with("otel/opentelemetry-collector:"),
        "compose otel-collector must run the otel/opentelemetry-collector image"
    );
    assert!(
        list(&collector["volumes"])
            .iter()
            .filter_map(|v| v.as_str())
            .any(|v| v.starts_with("./otel-collector.yaml:")),
        "compose otel-collector must mount ./otel-collector.yaml"
    );
    for name in [REGISTRY, CRYPTO] {
        let env = compose_env(services[name]);
        let endpoint = env
            .get("OTEL_EXPORTER_OTLP_ENDPOINT")
            .cloned()
            .flatten()
            .unwrap_or_else(|| panic!("compose {name} sets no OTEL_EXPORTER_OTLP_ENDPOINT"));
        let (_, host, port) = split_endpoint(&endpoint);
        assert_eq!(
            (host.as_str(), port),
            ("otel-collector", 4317),
            "compose {name}: OTEL_EXPORTER_OTLP_ENDPOINT {endpoint}"
        );
    }
}

#[test]
fn otel_collector_receives_otlp_grpc_and_prints_with_the_debug_exporter() {
    let docs = parse(&deploy_dir().join("otel-collector.yaml")).expect("parses");
    let config = &docs[0];
    let endpoint = config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
        .as_str()
        .expect("receivers.otlp.protocols.grpc.endpoint is set (the default is localhost only)");
    assert_eq!(
        listen_port(endpoint),
        4317,
        "the OTLP gRPC receiver must listen on 4317"
    );
    assert!(
        endpoint.starts_with("0.0.0.0:") || endpoint.starts_with("[::]:"),
        "the OTLP gRPC receiver must listen on every interface, not {endpoint}"
    );
    assert!(
        config["exporters"]["debug"].is_hash() || config["exporters"]["debug"].is_null(),
        "the collector must define the debug exporter"
    );
    let pipelines = config["service"]["pipelines"]
        .as_hash()
        .expect("service.pipelines");
    let names = |y: &Yaml| -> Vec<String> { list(y).into_iter().filter_map(scalar).collect() };
    for (pipeline, definition) in pipelines {
        let pipeline = str_or(pipeline, "?");
        for section in ["receivers", "processors", "exporters"] {
            for component in names(&definition[section]) {
                assert!(
                    !config[section][component.as_str()].is_badvalue(),
                    "pipeline {pipeline} uses {section} {component}, which is not defined"
                );
            }
        }
    }
    let traces = &config["service"]["pipelines"]["traces"];
    assert!(
        names(&traces["receivers"]).contains(&"otlp".to_owned()),
        "the traces pipeline must receive OTLP"
    );
    assert!(
        names(&traces["exporters"]).contains(&"debug".to_owned()),
        "the traces pipeline must export to debug"
    );

    // Prometheus scrapes, if any, name compose services and their metrics ports.
    let compose = compose();
    for job in list(&config["receivers"]["prometheus"]["config"]["scrape_configs"]) {
        for static_config in list(&job["static_configs"]) {
            for target in list(&static_config["targets"])
                .into_iter()
                .filter_map(scalar)
            {
                let (host, port) = target
                    .rsplit_once(':')
                    .unwrap_or_else(|| panic!("scrape target {target} has no port"));
                let env = compose_env(compose_service(&compose, host));
                let metrics = env
                    .iter()
                    .find(|(k, _)| k.ends_with("_METRICS_LISTEN"))
                    .and_then(|(_, v)| v.clone())
                    .unwrap_or_else(|| panic!("compose {host} sets no *_METRICS_LISTEN"));
                assert_eq!(
                    port.parse::<i64>().ok(),
                    Some(listen_port(&metrics)),
                    "scrape target {target} must use {host}'s metrics port ({metrics})"
                );
            }
        }
    }
}

#[test]
fn compose_checks_both_services_with_their_own_healthcheck_subcommand() {
    let compose = compose();
    let stages = dockerfile_stages();
    for name in [CRYPTO, REGISTRY] {
        let service = compose_service(&compose, name);
        let target = service["build"]["target"]
            .as_str()
            .unwrap_or_else(|| panic!("compose service {name}: no build.target"));
        let entrypoint = stage_chain(&stages, target)
            .iter()
            .flat_map(|s| s.instructions.iter().rev())
            .find(|(k, _)| k == "ENTRYPOINT")
            .map(|(_, args)| args.clone())
            .unwrap_or_else(|| panic!("Dockerfile target {target} has no ENTRYPOINT"));
        let binary = entrypoint
            .trim_matches(|c| c == '[' || c == ']')
            .split(',')
            .next()
            .map(|b| b.trim().trim_matches('"').to_owned())
            .unwrap_or_default();
        let test: Vec<String> = list(&service["healthcheck"]["test"])
            .into_iter()
            .filter_map(scalar)
            .collect();
        // Exec form (CMD): the distroless image has no shell for CMD-SHELL.
        assert_eq!(
            test,
            ["CMD", binary.as_str(), "healthcheck"],
            "compose service {name}: the healthcheck runs the image's own binary's \
             `healthcheck`, which reads the service's settings"
        );
        // The subcommand gives up after 3 s; compose must wait longer.
        let timeout = seconds(str_or(&service["healthcheck"]["timeout"], "30s"));
        assert!(
            timeout > 3,
            "compose service {name}: healthcheck timeout {timeout} s must exceed the \
             subcommand's own 3 s"
        );
    }
    // The registry's gRPC port is TLS: the check needs its plaintext port.
    let registry_env = compose_env(compose_service(&compose, REGISTRY));
    if registry_env.contains_key("REGISTRY_TLS_CERT_FILE") {
        assert!(
            registry_env
                .get("REGISTRY_HEALTH_LISTEN")
                .cloned()
                .flatten()
                .is_some(),
            "compose registry-service serves TLS: its healthcheck needs REGISTRY_HEALTH_LISTEN"
        );
    }
    assert_eq!(
        compose_depends_on(compose_service(&compose, REGISTRY))
            .get(CRYPTO)
            .cloned()
            .flatten()
            .as_deref(),
        Some("service_healthy"),
        "compose registry-service must wait for a healthy crypto-service"
    );
}

// ---------------------------------------------------------------- Dockerfile

#[test]
fn dockerfile_targets_run_as_non_root_and_expose_the_manifest_ports() {
    let text = fs::read_to_string(deploy_dir().join("Dockerfile")).expect("deploy/Dockerfile");
    let stages = dockerfile_stages();
    let builder = &stages[0];
    assert!(
        builder.base.starts_with("rust:1.95") && builder.base.contains("bookworm"),
        "the builder must be the official Rust 1.95 bookworm image, is {}",
        builder.base
    );
    assert!(
        stages
            .iter()
            .flat_map(|s| &s.instructions)
            .any(|(k, args)| k == "RUN"
                && args.contains("cargo build")
                && args.contains("--locked")),
        "deploy/Dockerfile must build with cargo build --locked"
    );
    for (keyword, args) in stages.iter().flat_map(|s| &s.instructions) {
        if keyword == "ENV" || keyword == "ARG" {
            for (name, _) in env_pairs(args) {
                assert!(
                    !is_secret_name(&name) || name.ends_with("_FILE"),
                    "deploy/Dockerfile sets {keyword} {name}: no secrets in the image"
                );
            }
        }
    }
    let objects = k8s_objects();
    let compose = compose();
    for target in [CRYPTO, REGISTRY] {
        let chain = stage_chain(&stages, target);
        let user = chain
            .iter()
            .flat_map(|s| s.instructions.iter().rev())
            .find(|(k, _)| k == "USER")
            .map(|(_, args)| args.clone())
            .unwrap_or_else(|| panic!("Dockerfile target {target} sets no USER"));
        let uid = user.split(':').next().unwrap_or_default();
        assert!(
            uid.parse::<u32>().is_ok_and(|u| u != 0),
            "Dockerfile target {target}: USER {user} must be a numeric non-root uid \
             (so Kubernetes can verify runAsNonRoot)"
        );
        let exposed: BTreeSet<i64> = chain
            .iter()
            .flat_map(|s| &s.instructions)
            .filter(|(k, _)| k == "EXPOSE")
            .flat_map(|(_, args)| args.split_whitespace())
            .map(|p| {
                p.trim_end_matches("/tcp")
                    .parse()
                    .unwrap_or_else(|_| panic!("Dockerfile target {target}: EXPOSE {p}"))
            })
            .collect();
        let deployment = object(&objects, "Deployment", target);
        let declared: BTreeSet<i64> = deployment
            .containers()
            .iter()
            .flat_map(|c| container_ports(c).into_values())
            .collect();
        assert_eq!(
            exposed, declared,
            "Dockerfile target {target} must EXPOSE the containerPorts of its Deployment"
        );
        let compose_ports: BTreeSet<i64> = compose_env(compose_service(&compose, target))
            .into_iter()
            .filter(|(k, _)| k.ends_with("_LISTEN"))
            .filter_map(|(_, v)| v.filter(|v| !v.starts_with("unix:")))
            .map(|v| listen_port(&v))
            .collect();
        assert!(
            compose_ports.is_subset(&exposed),
            "Dockerfile target {target} must EXPOSE the ports compose's {target} listens on \
             ({compose_ports:?}; it exposes {exposed:?})"
        );
    }
    // Every workload runs an image that one of the targets builds.
    for workload in objects.iter().filter(|o| o.pod_template().is_some()) {
        for container in workload.containers() {
            let image = str_or(&container["image"], "");
            let repository = image_repository(image);
            assert!(
                stages.iter().any(|s| s
                    .name
                    .as_deref()
                    .is_some_and(|n| repository.ends_with(&format!("/{n}")))),
                "{}: image {image} is not built by a target of deploy/Dockerfile",
                workload.id()
            );
        }
    }
    let ignore = fs::read_to_string(deploy_dir().join("Dockerfile.dockerignore"))
        .expect("deploy/Dockerfile.dockerignore keeps secrets out of the build context");
    let rules: BTreeSet<&str> = ignore
        .lines()
        .map(|l| l.trim().trim_end_matches('/'))
        .collect();
    for needed in [".dev", "target"] {
        assert!(
            rules.contains(needed),
            "deploy/Dockerfile.dockerignore must exclude {needed}/"
        );
    }
    assert!(
        rules.contains("deploy") || rules.contains("deploy/secrets"),
        "deploy/Dockerfile.dockerignore must exclude deploy/secrets/"
    );
    assert!(
        text.contains("--target crypto-service") && text.contains("--target registry-service"),
        "deploy/Dockerfile's header should show how to build each target"
    );
}

// ---------------------------------------------------------------- rendered

/// Kinds that Kubernetes does not build in: kubernetes-validate has no
/// schema for them, so tests/crd/validate.mjs checks them against their
/// published CRD schemas.
const CUSTOM_KINDS: &[&str] = &[
    "AuthorizationPolicy",
    "PeerAuthentication",
    "ServiceMonitor",
];

#[test]
fn rendered_manifests_pass_kubernetes_validate_strict_and_their_crd_schemas() {
    let dir = tempfile::tempdir().expect("tempdir");
    let newest = newest_kubernetes_version();
    let mut custom_seen = BTreeSet::new();
    for (name, text) in rendered() {
        let file = dir.path().join(format!("{name}.yaml"));
        fs::write(&file, &text).expect("write the rendered manifests");
        let docs = YamlLoader::load_from_str(&text).expect("kubectl's output parses");
        let (custom, built_in): (Vec<&Yaml>, Vec<&Yaml>) = docs
            .iter()
            .filter(|d| !d.is_null())
            .partition(|d| CUSTOM_KINDS.contains(&str_or(&d["kind"], "")));
        let built_in: BTreeSet<String> = built_in
            .iter()
            .map(|d| {
                format!(
                    "{}/{}",
                    str_or(&d["kind"], "").to_lowercase(),
                    str_or(&d["metadata"]["name"], "")
                )
            })
            .collect();
        let custom_ids: BTreeSet<String> = custom
            .iter()
            .map(|d| {
                format!(
                    "{}/{}",
                    str_or(&d["kind"], ""),
                    str_or(&d["metadata"]["name"], "")
                )
            })
            .collect();
        let custom_kinds: BTreeSet<String> = custom
            .iter()
            .map(|d| str_or(&d["kind"], "").to_owned())
            .collect();
        custom_seen.extend(custom_kinds.iter().cloned());

        for version in ["1.29.0", newest.as_str()] {
            let (ok, printed) = run_tool(
                "kubernetes-validate",
                &["--strict", "-k", version, &file.display().to_string()],
                None,
            );
            assert!(
                ok,
                "kubernetes-validate --strict -k {version} rejects the rendered {name}:\n{printed}"
            );
            // It passes a kind it has no schema for with a warning: every
            // built-in object must be reported as passed, and only the
            // custom kinds may be unknown to it.
            let passed: BTreeSet<String> = printed
                .lines()
                .filter_map(|line| line.split_once(" passed for resource "))
                .filter_map(|(_, rest)| rest.split_whitespace().next())
                .map(str::to_owned)
                .collect();
            assert_eq!(
                passed, built_in,
                "kubernetes-validate -k {version} on the rendered {name}: left, what it \
                 validated; right, the built-in objects rendered\n{printed}"
            );
            let unknown: BTreeSet<String> = printed
                .lines()
                .filter_map(|line| line.split_once("Couldn't find schema for kind "))
                .filter_map(|(_, rest)| rest.split_whitespace().next())
                .map(str::to_owned)
                .collect();
            assert_eq!(
                unknown, custom_kinds,
                "kubernetes-validate -k {version} on the rendered {name}: kinds it has no \
                 schema for (left) must be exactly the custom ones (right)\n{printed}"
            );
        }

        if !custom_ids.is_empty() {
            let node_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crd");
            assert!(
                node_dir.join("node_modules").is_dir(),
                "tests/crd's packages are not installed: run `bash scripts/node-tools`"
            );
            let (ok, printed) = run_tool(
                "node",
                &["validate.mjs", &file.display().to_string()],
                Some(&node_dir),
            );
            assert!(
                ok,
                "the custom resources of the rendered {name} do not match their CRD schemas:\n{printed}"
            );
            let passed: BTreeSet<String> = printed
                .lines()
                .filter_map(|line| line.strip_prefix("passed "))
                .map(str::to_owned)
                .collect();
            assert_eq!(
                passed, custom_ids,
                "the rendered {name}: custom resources validated (left) and rendered (right)"
            );
        }
    }
    let all: BTreeSet<String> = CUSTOM_KINDS.iter().map(|k| (*k).to_owned()).collect();
    assert_eq!(
        custom_seen, all,
        "every custom kind this test knows is rendered somewhere (and checked)"
    );
}

#[test]
fn the_istio_overlay_admits_only_the_registry_identity_to_crypto_and_leaves_tls_to_the_mesh() {
    let objects = rendered_objects("istio");
    let namespaces: BTreeSet<&str> = objects
        .iter()
        .map(|o| str_or(&o.doc["metadata"]["namespace"], ""))
        .collect();
    assert_eq!(
        namespaces.len(),
        1,
        "the Istio overlay puts everything in one namespace: {namespaces:?}"
    );
    let namespace = namespaces.into_iter().next().unwrap_or_default();
    assert!(!namespace.is_empty(), "the Istio overlay sets no namespace");

    let registry = object(&objects, "Deployment", REGISTRY);
    let registry_pod = &registry.pod_template().expect("a Deployment")["spec"];
    let account = registry_pod["serviceAccountName"]
        .as_str()
        .expect("the registry runs as a ServiceAccount of its own");
    let principal = format!("cluster.local/ns/{namespace}/sa/{account}");
    let crypto = object(&objects, "Deployment", CRYPTO);
    let crypto_container = crypto.containers()[0];
    let (_, crypto_grpc) = grpc_listen(crypto_container, &crypto.id());
    let (_, crypto_metrics) =
        metrics_listen(crypto_container, &crypto.id()).expect("crypto-service serves metrics");
    let crypto_env = env_literal(crypto_container);
    assert_eq!(
        crypto_env.get("CRYPTO_MESH_MTLS").map(String::as_str),
        Some("true"),
        "crypto-service behind the mesh needs CRYPTO_MESH_MTLS"
    );
    assert_eq!(
        crypto_env.get("CRYPTO_REGISTRY_CLIENTS"),
        Some(&format!("uri:spiffe://{principal}")),
        "crypto-service must name the registry's mesh identity in namespace {namespace}"
    );

    // Mutual TLS is STRICT for the namespace; a workload may relax only
    // its metrics port (scraped by a Prometheus outside the mesh).
    let metrics_ports: BTreeSet<i64> = of_kind(&objects, "Deployment")
        .iter()
        .filter_map(|d| metrics_listen(d.containers()[0], &d.id()).map(|(_, port)| port))
        .collect();
    let peer_authentications = of_kind(&objects, "PeerAuthentication");
    assert!(
        peer_authentications
            .iter()
            .any(|p| p.doc["spec"]["selector"].is_badvalue()
                && p.doc["spec"]["mtls"]["mode"].as_str() == Some("STRICT")),
        "the Istio overlay needs a namespace-wide PeerAuthentication with mode STRICT"
    );
    for policy in &peer_authentications {
        assert_eq!(
            policy.doc["spec"]["mtls"]["mode"].as_str(),
            Some("STRICT"),
            "{}: mode must be STRICT",
            policy.id()
        );
        for (port, _) in policy.doc["spec"]["portLevelMtls"]
            .as_hash()
            .into_iter()
            .flatten()
        {
            let port: i64 = scalar(port)
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("{}: a port that is not a number", policy.id()));
            assert!(
                metrics_ports.contains(&port),
                "{}: only metrics ports {metrics_ports:?} may leave STRICT, not {port}",
                policy.id()
            );
        }
    }

    // Only the registry's identity reaches crypto-service's gRPC port.
    let crypto_labels = crypto.pod_labels();
    let authorizations: Vec<&Object> = of_kind(&objects, "AuthorizationPolicy")
        .into_iter()
        .filter(|p| {
            selects(
                &string_map(&p.doc["spec"]["selector"]["matchLabels"]),
                &crypto_labels,
            )
        })
        .collect();
    assert!(
        !authorizations.is_empty(),
        "no AuthorizationPolicy selects crypto-service"
    );
    let mut admitted = false;
    for policy in authorizations {
        let id = policy.id();
        assert_eq!(
            str_or(&policy.doc["spec"]["action"], "ALLOW"),
            "ALLOW",
            "{id}"
        );
        for rule in list(&policy.doc["spec"]["rules"]) {
            let ports: Vec<i64> = list(&rule["to"])
                .iter()
                .flat_map(|to| list(&to["operation"]["ports"]))
                .map(|p| {
                    scalar(p)
                        .and_then(|p| p.parse().ok())
                        .unwrap_or_else(|| panic!("{id}: a port that is not a number"))
                })
                .collect();
            if ports.is_empty() || ports.contains(&crypto_grpc) {
                let sources = list(&rule["from"]);
                assert!(
                    !sources.is_empty(),
                    "{id}: a rule admits anyone to port {crypto_grpc}"
                );
                for source in sources {
                    let principals: Vec<String> = list(&source["source"]["principals"])
                        .into_iter()
                        .filter_map(scalar)
                        .collect();
                    assert_eq!(
                        principals,
                        std::slice::from_ref(&principal),
                        "{id}: crypto's gRPC port admits only {principal}"
                    );
                    assert_eq!(
                        source["source"].as_hash().map(|h| h.len()),
                        Some(1),
                        "{id}: principals alone name who is admitted"
                    );
                }
                admitted = true;
            } else {
                assert!(
                    ports.iter().all(|p| *p == crypto_metrics),
                    "{id}: a rule without the registry's identity opens {ports:?}"
                );
            }
        }
    }
    assert!(
        admitted,
        "no AuthorizationPolicy rule admits the registry to port {crypto_grpc}"
    );

    // The registry leaves TLS to the mesh, so the sidecars see gRPC.
    let registry_container = registry.containers()[0];
    let registry_env = env_literal(registry_container);
    assert_eq!(
        registry_env.get("REGISTRY_MESH_MTLS").map(String::as_str),
        Some("true"),
        "the registry behind the mesh needs REGISTRY_MESH_MTLS"
    );
    for setting in ["REGISTRY_TLS_CERT_FILE", "REGISTRY_TLS_KEY_FILE"] {
        assert!(
            !registry_env.contains_key(setting),
            "{setting} is still set"
        );
    }
    let failures = check_registry_transport(
        &registry.id(),
        &registry_env
            .iter()
            .map(|(k, v)| (k.clone(), Some(v.clone())))
            .collect(),
        &|_: &str| false,
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let volumes: BTreeSet<&str> = list(&registry_pod["volumes"])
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    for mount in list(&registry_container["volumeMounts"]) {
        let volume = str_or(&mount["name"], "");
        assert!(
            volumes.contains(volume),
            "a mount of volume {volume}, which is gone"
        );
    }
    let (_, registry_grpc) = grpc_listen(registry_container, &registry.id());
    let service = object(&objects, "Service", REGISTRY);
    for port in list(&service.doc["spec"]["ports"]) {
        let number = port["port"].as_i64().unwrap_or_default();
        if resolve_target_port(&port["targetPort"], number, &registry.containers())
            == Some(registry_grpc)
        {
            assert_eq!(
                port["appProtocol"].as_str(),
                Some("grpc"),
                "behind the mesh the registry's port carries plaintext gRPC"
            );
        }
    }

    // Sidecars for both Deployments, none for the migration Job.
    for deployment in of_kind(&objects, "Deployment") {
        let template = deployment.pod_template().expect("a Deployment");
        let mut marks = string_map(&template["metadata"]["labels"]);
        marks.extend(string_map(&template["metadata"]["annotations"]));
        assert_eq!(
            marks.get("sidecar.istio.io/inject").map(String::as_str),
            Some("true"),
            "{}: its pods need the sidecar",
            deployment.id()
        );
    }
    for job in of_kind(&objects, "Job") {
        let annotations =
            string_map(&job.pod_template().expect("a Job")["metadata"]["annotations"]);
        assert_eq!(
            annotations
                .get("sidecar.istio.io/inject")
                .map(String::as_str),
            Some("false"),
            "{}",
            job.id()
        );
    }

    // The base's policies still hold; the sidecars may also reach istiod.
    const ISTIOD_XDS: i64 = 15012;
    check_network_policies(&objects, &[ISTIOD_XDS]);
    for deployment in of_kind(&objects, "Deployment") {
        let labels = deployment.pod_labels();
        assert!(
            of_kind(&objects, "NetworkPolicy").iter().any(|p| {
                selects(
                    &label_selector(&p.doc["spec"]["podSelector"], &p.id()),
                    &labels,
                ) && list(&p.doc["spec"]["egress"]).iter().any(|rule| {
                    list(&rule["ports"])
                        .iter()
                        .any(|e| e["port"].as_i64() == Some(ISTIOD_XDS))
                })
            }),
            "{}: its sidecar cannot reach istiod on {ISTIOD_XDS}",
            deployment.id()
        );
    }
}

#[test]
fn the_service_monitors_scrape_each_services_metrics_port() {
    assert!(
        of_kind(&k8s_objects(), "ServiceMonitor").is_empty(),
        "the base must apply without the Prometheus operator's CRDs: ServiceMonitors belong \
         in deploy/k8s/monitoring"
    );
    let objects = rendered_objects("base+monitoring");
    let mut scraped = BTreeSet::new();
    for monitor in of_kind(&objects, "ServiceMonitor") {
        let id = monitor.id();
        let selector = label_selector(&monitor.doc["spec"]["selector"], &id);
        let services: Vec<&Object> = of_kind(&objects, "Service")
            .into_iter()
            .filter(|s| selects(&selector, &string_map(&s.doc["metadata"]["labels"])))
            .collect();
        assert_eq!(services.len(), 1, "{id} must select exactly one Service");
        let service = services[0];
        let deployment = object(&objects, "Deployment", service.name());
        let containers = deployment.containers();
        let (setting, metrics_port) = metrics_listen(containers[0], &deployment.id())
            .unwrap_or_else(|| panic!("{} serves no metrics", deployment.id()));
        let endpoints = list(&monitor.doc["spec"]["endpoints"]);
        assert!(!endpoints.is_empty(), "{id} has no endpoints");
        for endpoint in endpoints {
            let name = str_or(&endpoint["port"], "");
            let port = list(&service.doc["spec"]["ports"])
                .into_iter()
                .find(|p| p["name"].as_str() == Some(name))
                .unwrap_or_else(|| panic!("{id}: {} has no port named {name:?}", service.id()));
            let number = port["port"].as_i64().unwrap_or_default();
            assert_eq!(
                resolve_target_port(&port["targetPort"], number, &containers),
                Some(metrics_port),
                "{id}: port {name:?} must lead to {setting}"
            );
            assert_eq!(str_or(&endpoint["path"], "/metrics"), "/metrics", "{id}");
            assert_eq!(str_or(&endpoint["scheme"], "http"), "http", "{id}");
        }
        scraped.insert(service.name().to_owned());
    }
    assert_eq!(
        scraped,
        BTreeSet::from([CRYPTO.to_owned(), REGISTRY.to_owned()]),
        "both services are scraped"
    );
}

// ================================================================ helpers

/// The manifests as a cluster gets them, rendered by `kubectl kustomize`:
/// the base, the base with the monitoring Component, and the Istio overlay.
fn rendered() -> Vec<(&'static str, String)> {
    let k8s = fs::canonicalize(deploy_dir().join("k8s")).expect("deploy/k8s");
    // A Component renders only inside a kustomization, which may name its
    // bases by relative paths only.
    let combined = tempfile::tempdir().expect("tempdir");
    let here = fs::canonicalize(combined.path()).expect("the temporary directory");
    let up = "../".repeat(here.components().count().saturating_sub(1));
    let to_k8s = format!("{up}{}", k8s.strip_prefix("/").unwrap_or(&k8s).display());
    fs::write(
        here.join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
             resources:\n  - {to_k8s}/base\ncomponents:\n  - {to_k8s}/monitoring\n"
        ),
    )
    .expect("write a kustomization");
    vec![
        ("base", kustomize(&k8s.join("base"))),
        ("base+monitoring", kustomize(&here)),
        ("istio", kustomize(&k8s.join("istio"))),
    ]
}

/// The objects of one of [`rendered`]'s renderings.
fn rendered_objects(name: &str) -> Vec<Object> {
    let (_, text) = rendered()
        .into_iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no rendering named {name}"));
    YamlLoader::load_from_str(&text)
        .expect("kubectl's output parses")
        .into_iter()
        .filter(|doc| !doc.is_null())
        .map(|doc| Object {
            file: format!("k8s/ rendered: {name}"),
            doc,
        })
        .collect()
}

/// `kubectl kustomize DIR`.
fn kustomize(dir: &Path) -> String {
    let (ok, printed) = run_tool("kubectl", &["kustomize", &dir.display().to_string()], None);
    assert!(ok, "kubectl kustomize {} failed:\n{printed}", dir.display());
    printed
}

/// The newest Kubernetes version the installed kubernetes-validate has
/// schemas for.
fn newest_kubernetes_version() -> String {
    let (ok, printed) = run_tool(
        "python3",
        &[
            "-c",
            "from kubernetes_validate.utils import latest_version; print(latest_version())",
        ],
        None,
    );
    assert!(ok, "kubernetes-validate is not importable:\n{printed}");
    printed.trim().to_owned()
}

/// Runs a tool to completion: whether it succeeded, and its stdout then
/// stderr. Panics, naming scripts/test, when the tool is not installed.
fn run_tool(program: &str, args: &[&str], dir: Option<&Path>) -> (bool, String) {
    let mut command = std::process::Command::new(program);
    command.args(args);
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{program} does not run ({e}): scripts/test installs it"));
    let mut printed = String::from_utf8_lossy(&output.stdout).into_owned();
    printed.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status.success(), printed)
}

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// `path` relative to deploy/, with `/` separators.
fn relative(path: &Path) -> String {
    path.strip_prefix(deploy_dir())
        .unwrap_or(path)
        .to_string_lossy()
        .replace('\\', "/")
}

/// Every `*.yaml` / `*.yml` under `dir`, sorted.
fn yaml_paths(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let entries = fs::read_dir(&current)
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", current.display()));
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// All documents of one YAML file.
fn parse(path: &Path) -> Result<Vec<Yaml>, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    YamlLoader::load_from_str(&text).map_err(|e| e.to_string())
}

/// One Kubernetes object from deploy/k8s/, and the file it came from.
struct Object {
    file: String,
    doc: Yaml,
}

impl Object {
    fn kind(&self) -> &str {
        str_or(&self.doc["kind"], "")
    }

    fn name(&self) -> &str {
        str_or(&self.doc["metadata"]["name"], "")
    }

    fn id(&self) -> String {
        format!("{} {} (deploy/{})", self.kind(), self.name(), self.file)
    }

    /// The pod template of a workload; None for other kinds.
    fn pod_template(&self) -> Option<&Yaml> {
        let spec = &self.doc["spec"];
        match self.kind() {
            "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
                Some(&spec["template"])
            }
            "CronJob" => Some(&spec["jobTemplate"]["spec"]["template"]),
            "Pod" => Some(&self.doc),
            _ => None,
        }
    }

    fn pod_labels(&self) -> BTreeMap<String, String> {
        self.pod_template()
            .map(|t| string_map(&t["metadata"]["labels"]))
            .unwrap_or_default()
    }

    /// Containers and init containers of a workload's pods.
    fn containers(&self) -> Vec<&Yaml> {
        self.pod_template()
            .map(|t| {
                let mut all = list(&t["spec"]["containers"]);
                all.extend(list(&t["spec"]["initContainers"]));
                all
            })
            .unwrap_or_default()
    }
}

/// Every object in every file of the base (deploy/k8s/base/) but its
/// kustomization: what `kubectl apply -k deploy/k8s/base` creates.
fn k8s_objects() -> Vec<Object> {
    objects_under("k8s/base")
}

/// Every object in the files under deploy/`dir` but the kustomizations
/// (an overlay's patches included, as they are written).
fn objects_under(dir: &str) -> Vec<Object> {
    let mut objects = Vec::new();
    for path in yaml_paths(&deploy_dir().join(dir)) {
        let docs = parse(&path)
            .unwrap_or_else(|e| panic!("deploy/{} does not parse: {e}", relative(&path)));
        for doc in docs {
            if !doc.is_null()
                && !matches!(doc["kind"].as_str(), Some("Kustomization" | "Component"))
            {
                objects.push(Object {
                    file: relative(&path),
                    doc,
                });
            }
        }
    }
    assert!(
        !objects.is_empty(),
        "no Kubernetes objects under deploy/{dir}/"
    );
    objects
}

fn of_kind<'a>(objects: &'a [Object], kind: &str) -> Vec<&'a Object> {
    objects.iter().filter(|o| o.kind() == kind).collect()
}

fn object<'a>(objects: &'a [Object], kind: &str, name: &str) -> &'a Object {
    objects
        .iter()
        .find(|o| o.kind() == kind && o.name() == name)
        .unwrap_or_else(|| {
            panic!(
                "no {kind} named {name} under deploy/k8s/; there are: {:?}",
                objects.iter().map(Object::id).collect::<Vec<_>>()
            )
        })
}

/// `(port name, containerPort)` of one container.
fn container_ports(container: &Yaml) -> BTreeMap<Option<String>, i64> {
    list(&container["ports"])
        .into_iter()
        .map(|p| {
            let port = p["containerPort"]
                .as_i64()
                .unwrap_or_else(|| panic!("a containerPort that is not a number: {p:?}"));
            (p["name"].as_str().map(str::to_owned), port)
        })
        .collect()
}

/// A container's literal env values (those given with `value`).
fn env_literal(container: &Yaml) -> BTreeMap<String, String> {
    list(&container["env"])
        .into_iter()
        .filter_map(|e| Some((e["name"].as_str()?.to_owned(), scalar(&e["value"])?)))
        .collect()
}

/// The one `*_LISTEN` setting (not `*_METRICS_LISTEN` nor
/// `*_HEALTH_LISTEN`) and its port.
fn grpc_listen(container: &Yaml, id: &str) -> (String, i64) {
    let found: Vec<(String, String)> = env_literal(container)
        .into_iter()
        .filter(|(k, _)| {
            k.ends_with("_LISTEN")
                && !k.ends_with("_METRICS_LISTEN")
                && !k.ends_with("_HEALTH_LISTEN")
        })
        .collect();
    match found.as_slice() {
        [(setting, value)] => (setting.clone(), listen_port(value)),
        other => panic!("{id}: want exactly one gRPC *_LISTEN setting, found {other:?}"),
    }
}

/// The plaintext health-only listener (`*_HEALTH_LISTEN`) and its port.
fn health_listen(container: &Yaml, id: &str) -> Option<(String, i64)> {
    let found: Vec<(String, String)> = env_literal(container)
        .into_iter()
        .filter(|(k, _)| k.ends_with("_HEALTH_LISTEN"))
        .collect();
    match found.as_slice() {
        [] => None,
        [(setting, value)] => Some((setting.clone(), listen_port(value))),
        other => panic!("{id}: more than one *_HEALTH_LISTEN setting: {other:?}"),
    }
}

fn metrics_listen(container: &Yaml, id: &str) -> Option<(String, i64)> {
    let found: Vec<(String, String)> = env_literal(container)
        .into_iter()
        .filter(|(k, _)| k.ends_with("_METRICS_LISTEN"))
        .collect();
    match found.as_slice() {
        [] => None,
        [(setting, value)] => Some((setting.clone(), listen_port(value))),
        other => panic!("{id}: more than one *_METRICS_LISTEN setting: {other:?}"),
    }
}

/// The port of `HOST:PORT` (or `[V6]:PORT`).
fn listen_port(address: &str) -> i64 {
    address
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or_else(|| panic!("{address:?} is not HOST:PORT"))
}

/// `(scheme, host, port)` of `scheme://[user[:password]@]host:port[/...]`.
fn split_endpoint(url: &str) -> (String, String, i64) {
    let (scheme, rest) = url
        .split_once("://")
        .unwrap_or_else(|| panic!("{url:?} has no scheme://"));
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = match host_port.rsplit_once(':') {
        Some((host, port)) => (
            host,
            port.parse()
                .unwrap_or_else(|_| panic!("{url:?}: port {port:?} is not a number")),
        ),
        None => (
            host_port,
            match scheme {
                "http" => 80,
                "https" => 443,
                "postgres" | "postgresql" => 5432,
                _ => panic!("{url:?}: no port and no default for {scheme}"),
            },
        ),
    };
    (scheme.to_owned(), host.to_owned(), port)
}

/// A Service port's target: the container port it leads to, if one exists.
fn resolve_target_port(target: &Yaml, port: i64, containers: &[&Yaml]) -> Option<i64> {
    let all: Vec<(Option<String>, i64)> =
        containers.iter().flat_map(|c| container_ports(c)).collect();
    match target {
        Yaml::String(name) => all
            .into_iter()
            .find(|(n, _)| n.as_deref() == Some(name.as_str()))
            .map(|(_, p)| p),
        Yaml::Integer(number) => all.into_iter().find(|(_, p)| p == number).map(|(_, p)| p),
        // No targetPort: the same as `port`.
        Yaml::BadValue => all.into_iter().find(|(_, p)| *p == port).map(|(_, p)| p),
        _ => None,
    }
}

/// Whether a NetworkPolicy port entry covers `port`.
fn covers_port(entry: &Yaml, port: i64, names: &BTreeMap<String, i64>) -> bool {
    match &entry["port"] {
        // No port: every port of the protocol.
        Yaml::BadValue | Yaml::Null => true,
        Yaml::Integer(first) => match entry["endPort"].as_i64() {
            Some(last) => (*first..=last).contains(&port),
            None => *first == port,
        },
        Yaml::String(name) => names.get(name) == Some(&port),
        _ => false,
    }
}

/// `matchLabels` of a LabelSelector; selectors with `matchExpressions` are
/// beyond what this test evaluates.
fn label_selector(selector: &Yaml, id: &str) -> BTreeMap<String, String> {
    assert!(
        selector["matchExpressions"].is_badvalue(),
        "{id}: matchExpressions are not evaluated by tests/tests/deploy.rs; use matchLabels"
    );
    string_map(&selector["matchLabels"])
}

/// Kubernetes label selection: every pair of the selector is in `labels`
/// (so an empty selector selects everything).
fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn string_map(map: &Yaml) -> BTreeMap<String, String> {
    map.as_hash()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((scalar(k)?, scalar(v)?)))
        .collect()
}

/// The elements of a YAML sequence (none when absent or not a sequence).
fn list(y: &Yaml) -> Vec<&Yaml> {
    y.as_vec().map(|v| v.iter().collect()).unwrap_or_default()
}

/// A scalar as text (strings, numbers, booleans); None otherwise.
fn scalar(y: &Yaml) -> Option<String> {
    match y {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

fn str_or<'a>(y: &'a Yaml, default: &'a str) -> &'a str {
    y.as_str().unwrap_or(default)
}

/// Calls `visit` with every string scalar (keys included) in `y`.
fn walk_strings(y: &Yaml, visit: &mut impl FnMut(&str)) {
    match y {
        Yaml::String(s) => visit(s),
        Yaml::Array(items) => items.iter().for_each(|i| walk_strings(i, visit)),
        Yaml::Hash(map) => {
            for (k, v) in map {
                walk_strings(k, visit);
                walk_strings(v, visit);
            }
        }
        _ => {}
    }
}

fn is_secret_name(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    SECRET_SETTINGS.contains(&upper.as_str()) || SECRET_WORDS.iter().any(|w| upper.contains(w))
}

/// Records a failure when a literal setting carries a secret: a secret
/// setting with a value, a `*_FILE` whose value is not a path, or a
/// DATABASE_URL with a password.
fn check_literal(owner: &str, name: &str, value: &str, failures: &mut Vec<String>) {
    if name.ends_with("_FILE") {
        if !value.starts_with('/') || value.contains(char::is_whitespace) {
            failures.push(format!(
                "{owner}: {name} must be a file path, not file contents"
            ));
        }
    } else if name == "DATABASE_URL" {
        let authority = value
            .split_once("://")
            .map_or(value, |(_, rest)| rest)
            .split(['/', '?'])
            .next()
            .unwrap_or_default();
        let has_password = authority
            .rsplit_once('@')
            .is_some_and(|(userinfo, _)| userinfo.contains(':'));
        if has_password || value.to_ascii_lowercase().contains("password=") {
            failures.push(format!(
                "{owner}: DATABASE_URL carries a password; use a Secret (Kubernetes) or PGPASSFILE (compose)"
            ));
        }
    } else if is_secret_name(name) && !value.is_empty() {
        failures.push(format!(
            "{owner}: {name} has a literal value; give it as {name}_FILE from a mounted secret"
        ));
    }
}

/// An image reference without its tag and digest
/// (`host:5000/team/app:1.0@sha256:…` → `host:5000/team/app`).
fn image_repository(image: &str) -> &str {
    let image = image.split('@').next().unwrap_or_default();
    match image.rsplit_once(':') {
        Some((repository, tag)) if !tag.contains('/') => repository,
        _ => image,
    }
}

/// deploy/compose.yaml, parsed.
fn compose() -> Yaml {
    let mut docs = parse(&deploy_dir().join("compose.yaml")).expect("compose.yaml parses");
    assert_eq!(docs.len(), 1, "compose.yaml must be one YAML document");
    docs.remove(0)
}

fn compose_services(compose: &Yaml) -> Vec<(&str, &Yaml)> {
    compose["services"]
        .as_hash()
        .expect("compose.yaml has services")
        .iter()
        .filter_map(|(k, v)| Some((k.as_str()?, v)))
        .collect()
}

fn compose_service<'a>(compose: &'a Yaml, name: &str) -> &'a Yaml {
    let service = &compose["services"][name];
    assert!(
        service.is_hash(),
        "compose.yaml has no service named {name}"
    );
    service
}

/// A compose service's environment, from its map or `KEY=VALUE` list form.
fn compose_env(service: &Yaml) -> BTreeMap<String, Option<String>> {
    match &service["environment"] {
        Yaml::Hash(map) => map
            .iter()
            .filter_map(|(k, v)| Some((scalar(k)?, scalar(v))))
            .collect(),
        Yaml::Array(items) => items
            .iter()
            .filter_map(Yaml::as_str)
            .map(|item| match item.split_once('=') {
                Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
                None => (item.to_owned(), None),
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// A compose service's secrets: mount path in the container → secret name.
fn compose_secret_mounts(service: &Yaml) -> BTreeMap<String, String> {
    list(&service["secrets"])
        .into_iter()
        .filter_map(|entry| {
            let (source, target) = match entry {
                Yaml::String(name) => (name.as_str(), name.as_str()),
                long => {
                    let source = long["source"].as_str()?;
                    (source, long["target"].as_str().unwrap_or(source))
                }
            };
            let path = if target.starts_with('/') {
                target.to_owned()
            } else {
                format!("/run/secrets/{target}")
            };
            Some((path, source.to_owned()))
        })
        .collect()
}

/// A compose service's dependencies and their conditions (None: started).
fn compose_depends_on(service: &Yaml) -> BTreeMap<String, Option<String>> {
    match &service["depends_on"] {
        Yaml::Array(items) => items
            .iter()
            .filter_map(|i| Some((i.as_str()?.to_owned(), None)))
            .collect(),
        Yaml::Hash(map) => map
            .iter()
            .filter_map(|(k, v)| {
                Some((
                    k.as_str()?.to_owned(),
                    v["condition"].as_str().map(str::to_owned),
                ))
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// Seconds in a compose duration such as `30s`, `1m30s` or `2m`.
fn seconds(duration: &str) -> u64 {
    let mut total = 0;
    let mut number = String::new();
    for c in duration.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let value: u64 = number
            .parse()
            .unwrap_or_else(|_| panic!("duration {duration:?}: a unit without a number"));
        total += value
            * match c {
                'h' => 3600,
                'm' => 60,
                's' => 1,
                _ => panic!("duration {duration:?}: unit {c:?} not understood by this test"),
            };
        number.clear();
    }
    assert!(number.is_empty(), "duration {duration:?} lacks a unit");
    total
}

/// One stage of deploy/Dockerfile: its `AS` name, base image and
/// instructions (keyword in capitals, arguments with continuations joined).
struct Stage {
    name: Option<String>,
    base: String,
    instructions: Vec<(String, String)>,
}

fn dockerfile_stages() -> Vec<Stage> {
    let text = fs::read_to_string(deploy_dir().join("Dockerfile")).expect("deploy/Dockerfile");
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || trimmed.is_empty() {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                logical.push(std::mem::take(&mut current));
            }
        }
    }
    let mut stages: Vec<Stage> = Vec::new();
    for instruction in logical {
        let (keyword, args) = instruction
            .split_once(char::is_whitespace)
            .unwrap_or((instruction.as_str(), ""));
        let keyword = keyword.to_ascii_uppercase();
        let args = args.trim().to_owned();
        if keyword == "FROM" {
            let words: Vec<&str> = args
                .split_whitespace()
                .filter(|w| !w.starts_with("--"))
                .collect();
            let name = words
                .iter()
                .position(|w| w.eq_ignore_ascii_case("as"))
                .and_then(|i| words.get(i + 1))
                .map(|n| (*n).to_owned());
            stages.push(Stage {
                name,
                base: words.first().copied().unwrap_or_default().to_owned(),
                instructions: Vec::new(),
            });
        } else if let Some(stage) = stages.last_mut() {
            stage.instructions.push((keyword, args));
        }
    }
    assert!(!stages.is_empty(), "deploy/Dockerfile has no FROM");
    stages
}

/// The stage named `target`, then the stages it is built on (nearest first).
fn stage_chain<'a>(stages: &'a [Stage], target: &str) -> Vec<&'a Stage> {
    let mut chain = Vec::new();
    let mut name = target.to_owned();
    while let Some(stage) = stages
        .iter()
        .find(|s| s.name.as_deref() == Some(name.as_str()))
    {
        assert!(
            chain.len() < stages.len(),
            "deploy/Dockerfile: stages built on each other in a loop"
        );
        chain.push(stage);
        name = stage.base.clone();
    }
    assert!(
        !chain.is_empty(),
        "deploy/Dockerfile has no stage named {target} (for --target {target})"
    );
    chain
}

/// `KEY=VALUE` pairs of an ENV or ARG instruction (or the legacy `KEY VALUE`).
fn env_pairs(args: &str) -> Vec<(String, String)> {
    let words: Vec<&str> = args.split_whitespace().collect();
    match words.first() {
        Some(first) if !first.contains('=') => {
            vec![((*first).to_owned(), words[1..].join(" "))]
        }
        _ => words
            .iter()
            .map(|w| match w.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.trim_matches('"').to_owned()),
                None => ((*w).to_owned(), String::new()),
            })
            .collect(),
    }
}
