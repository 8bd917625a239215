//! Migration from the Python platform end to end: `registry-service
//! import-fernet` reads the platform's provider table (the fixtures
//! `tests/python/make_fernet_fixtures.py` made with Python `cryptography`),
//! crypto-service re-encrypts each Fernet-encrypted key with `ImportFernet`,
//! and the registry serves the original keys through `ResolveAgent`. The
//! registry database is SQLite, or PostgreSQL with TEST_POSTGRES_URL (which
//! also gets a PostgreSQL copy of the legacy database).

use std::path::PathBuf;
use std::process::ExitStatus;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use proto::crypto::crypto_service_client::CryptoServiceClient;
use proto::crypto::{DecryptRequest, ImportFernetItem, ImportFernetRequest, import_fernet_result};
use proto::v1 as pb;
use proto::v1::agent_service_client::AgentServiceClient;
use proto::v1::provider_service_client::ProviderServiceClient;
use proto::v1::runtime_service_client::RuntimeServiceClient;
use sea_orm::{ConnectionTrait, Database, Statement};
use serde_json::Value;
use tests::stack::{STACK_KEY, Stack};
use tests::{Launch, Process, binary, start_crypto};
use tonic::Code;
use tonic_types::StatusExt;

const TENANT: &str = "acme";
const SUBJECT: &str = "migration-bot";
const FIXTURE_DB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/fernet/legacy.db");

fn fixtures() -> Value {
    serde_json::from_str(include_str!("../fixtures/fernet/expected.json")).expect("fixture JSON")
}

fn text<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("fixture {pointer}"))
}

/// name -> plaintext key (None for the row without one), for the tenant.
fn expected_keys(fixtures: &Value) -> Vec<(String, Option<String>)> {
    fixtures["api_keys"]
        .as_object()
        .expect("api_keys")
        .iter()
        .map(|(name, key)| (name.clone(), key.as_str().map(str::to_owned)))
        .collect()
}

/// Every plaintext key of the legacy database, other tenants' too.
fn all_plaintexts(fixtures: &Value) -> Vec<String> {
    let mut all: Vec<String> = expected_keys(fixtures)
        .into_iter()
        .filter_map(|(_, key)| key)
        .collect();
    all.extend(
        fixtures["other_tenants"]
            .as_object()
            .expect("other_tenants")
            .values()
            .filter_map(|v| v.as_str().map(str::to_owned)),
    );
    all
}

/// crypto-service settings with the platform's MASTER_SECRET / salt.
fn legacy_crypto(master_secret: &str) -> Launch {
    let fixtures = fixtures();
    Launch::default()
        .env("LEGACY_MASTER_SECRET", master_secret)
        .env(
            "LEGACY_ENCRYPTION_SALT",
            text(&fixtures, "/legacy/encryption_salt"),
        )
}

/// A private copy of the legacy SQLite database.
struct LegacyCopy {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl LegacyCopy {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("legacy.db");
        std::fs::copy(FIXTURE_DB, &path).expect("copy the legacy fixture");
        Self { _dir: dir, path }
    }

    fn url(&self) -> String {
        format!("sqlite://{}", self.path.display())
    }
}

/// Runs `registry-service import-fernet` against the stack's database and
/// `crypto_endpoint`, as the stack's registry is configured.
async fn import(
    stack: &Stack,
    crypto_endpoint: &str,
    legacy_url: &str,
    extra: &[&str],
) -> (ExitStatus, String) {
    let mut launch = Stack::default_registry()
        .arg("--log-format")
        .arg("json")
        .arg("import-fernet")
        .arg("--legacy-database-url")
        .arg(legacy_url)
        .arg("--tenant")
        .arg(TENANT)
        .arg("--subject")
        .arg(SUBJECT)
        .env("DATABASE_URL", stack.database.url())
        .env("CRYPTO_ENDPOINT", crypto_endpoint)
        .env("CRYPTO_TIMEOUT_SECONDS", "5");
    for arg in extra {
        launch = launch.arg(*arg);
    }
    Process::run_to_exit(&binary("registry-service"), launch).await
}

/// The lines the import printed for rows and its summary (logs are JSON).
fn report_lines(output: &str) -> Vec<&str> {
    output
        .lines()
        .filter(|line| !line.starts_with('{'))
        .collect()
}

/// `imported <name> as <id>` lines: name -> id.
fn imported_ids(output: &str) -> Vec<(String, String)> {
    report_lines(output)
        .into_iter()
        .filter_map(|line| line.strip_prefix("imported "))
        .map(|rest| {
            let (name, tail) = rest.rsplit_once(" as ").expect("`as <id>`");
            let id = tail.split(' ').next().unwrap_or_default();
            (name.to_owned(), id.to_owned())
        })
        .collect()
}

struct Clients {
    agents: AgentServiceClient<tests::auth::Authed>,
    providers: ProviderServiceClient<tests::auth::Authed>,
    runtime: RuntimeServiceClient<tests::auth::Authed>,
}

async fn clients(stack: &Stack) -> Clients {
    let channel = stack
        .channel_as("alice", TENANT, &["admin", "runtime"])
        .await;
    Clients {
        agents: AgentServiceClient::new(channel.clone()),
        providers: ProviderServiceClient::new(channel.clone()),
        runtime: RuntimeServiceClient::new(channel),
    }
}

async fn list_providers(c: &mut Clients) -> Vec<pb::Provider> {
    c.providers
        .list_providers(pb::ListProvidersRequest {
            page_size: 100,
            page_token: String::new(),
            ..Default::default()
        })
        .await
        .expect("list providers")
        .into_inner()
        .providers
}

/// What `ResolveAgent` gives for an agent assigned to `provider_id`.
async fn resolved_key(c: &mut Clients, provider_id: &str, agent_name: &str) -> String {
    let agent = c
        .agents
        .create_agent(pb::CreateAgentRequest {
            agent: Some(pb::Agent {
                name: agent_name.to_owned(),
                role: "Migrated".to_owned(),
                goal: "Use the imported key".to_owned(),
                backstory: "Came from the Python platform".to_owned(),
                llm_provider_id: Some(provider_id.to_owned()),
                ..Default::default()
            }),
            change_description: String::new(),
            ..Default::default()
        })
        .await
        .expect("create agent")
        .into_inner();
    c.runtime
        .resolve_agent(pb::ResolveAgentRequest {
            agent_id: agent.id,
            version_number: None,
            if_none_match: String::new(),
            label: String::new(),
        })
        .await
        .expect("resolve agent")
        .into_inner()
        .api_key
}

/// The stored form of every key in the legacy database, and the Fernet
/// token inside it.
async fn legacy_tokens(legacy_url: &str) -> Vec<String> {
    let db = Database::connect(legacy_url).await.expect("open legacy");
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT api_key FROM llm_providers WHERE api_key IS NOT NULL".to_owned(),
        ))
        .await
        .expect("read legacy keys");
    let mut tokens = Vec::new();
    for row in rows {
        let stored: String = row.try_get("", "api_key").expect("api_key");
        let inner = String::from_utf8(URL_SAFE.decode(&stored).expect("base64")).expect("token");
        assert!(inner.starts_with("gAAAAA"), "the platform's double base64");
        tokens.push(stored);
        tokens.push(inner);
    }
    db.close().await.expect("close legacy");
    tokens
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

async fn count(stack: &Stack, sql: &str) -> i64 {
    stack.database.count(sql).await
}

#[tokio::test]
async fn fixtures_import_and_resolve_to_the_original_keys_without_storing_them() {
    let fixtures = fixtures();
    let stack = Stack::launch(
        legacy_crypto(text(&fixtures, "/legacy/master_secret")),
        Stack::default_registry(),
    )
    .await;
    let legacy = LegacyCopy::new();
    let expected = expected_keys(&fixtures);
    let mut printed = String::new();

    // A dry run proves the legacy key through crypto-service, writes nothing.
    let (status, output) = import(
        &stack,
        &stack.crypto_endpoint,
        &legacy.url(),
        &["--dry-run"],
    )
    .await;
    printed.push_str(&output);
    assert!(status.success(), "{output}");
    let lines = report_lines(&output);
    for (name, _) in &expected {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&format!("would import {name} as "))),
            "{output}"
        );
    }
    assert!(
        lines.contains(
            &"import-fernet (dry run, nothing written): 5 to import, 0 skipped, 0 failed"
        ),
        "{output}"
    );
    assert_eq!(count(&stack, "SELECT COUNT(*) FROM providers").await, 0);

    let (status, output) = import(&stack, &stack.crypto_endpoint, &legacy.url(), &[]).await;
    printed.push_str(&output);
    assert!(status.success(), "{output}");
    let lines = report_lines(&output);
    assert!(
        lines.contains(&"import-fernet: 5 imported, 0 skipped, 0 failed"),
        "{output}"
    );
    assert!(!output.contains("Globex"), "another tenant's row: {output}");
    let ids = imported_ids(&output);
    assert_eq!(ids.len(), expected.len(), "{output}");

    let mut c = clients(&stack).await;
    let providers = list_providers(&mut c).await;
    assert_eq!(providers.len(), expected.len());
    for (index, (name, key)) in expected.iter().enumerate() {
        let provider = providers
            .iter()
            .find(|p| &p.name == name)
            .unwrap_or_else(|| panic!("{name} imported"));
        let (_, printed_id) = ids.iter().find(|(n, _)| n == name).expect("printed");
        assert_eq!(&provider.id, printed_id);
        assert_eq!(provider.version, 1, "{name}");
        assert_eq!(provider.api_key_set, key.is_some(), "{name}");
        assert_eq!(provider.created_by, SUBJECT);
        let shape = &fixtures["providers"][name.as_str()];
        assert_eq!(
            pb::ProviderType::try_from(provider.provider_type)
                .expect("type")
                .as_str_name(),
            shape["provider_type"].as_str().expect("type"),
            "{name}"
        );
        assert_eq!(
            provider.model_name,
            shape["model_name"].as_str().expect("model")
        );
        assert_eq!(
            provider.base_url,
            shape["base_url"].as_str().expect("base_url")
        );
        assert_eq!(
            provider.is_default,
            shape["is_default"].as_bool().expect("default")
        );

        let resolved = resolved_key(&mut c, &provider.id, &format!("Agent {index}")).await;
        assert_eq!(
            resolved,
            key.clone().unwrap_or_default(),
            "{name}: ResolveAgent gives back exactly the platform's key"
        );
    }
    let gpt4 = providers
        .iter()
        .find(|p| p.name == "OpenAI GPT-4")
        .expect("gpt-4");
    let params = gpt4
        .default_parameters
        .clone()
        .expect("config carried over");
    assert_eq!(
        (params.temperature, params.max_tokens),
        (Some(0.7), Some(2048))
    );
    let history = c
        .providers
        .list_provider_versions(pb::ListProviderVersionsRequest {
            provider_id: gpt4.id.clone(),
            page_size: 10,
            page_token: String::new(),
        })
        .await
        .expect("versions")
        .into_inner()
        .versions;
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].action, pb::VersionAction::Create as i32);
    assert_eq!(
        history[0].change_description,
        "Imported from the Python platform"
    );
    assert_eq!(history[0].changed_by, SUBJECT);

    // Running it again changes nothing.
    let (status, output) = import(&stack, &stack.crypto_endpoint, &legacy.url(), &[]).await;
    printed.push_str(&output);
    assert!(status.success(), "{output}");
    let lines = report_lines(&output);
    for (name, _) in &expected {
        assert!(
            lines.contains(
                &format!("skipped {name}: a provider with this name already exists in the tenant")
                    .as_str()
            ),
            "{output}"
        );
    }
    assert!(
        lines.contains(&"import-fernet: 0 imported, 5 skipped, 0 failed"),
        "{output}"
    );
    assert_eq!(count(&stack, "SELECT COUNT(*) FROM providers").await, 5);
    assert_eq!(
        count(&stack, "SELECT COUNT(*) FROM provider_versions").await,
        5
    );

    // Neither a plaintext key nor a Fernet token is stored, printed or logged.
    let stored = stack.database.stored_bytes().await;
    let logs = stack.logs();
    for key in all_plaintexts(&fixtures) {
        assert!(!contains(&stored, &key), "{key} stored in plaintext");
        assert!(!printed.contains(&key), "{key} printed by the import");
        assert!(!logs.contains(&key), "{key} in the service logs");
    }
    for token in legacy_tokens(&legacy.url()).await {
        assert!(!contains(&stored, &token), "a Fernet token was stored");
        assert!(!printed.contains(&token) && !logs.contains(&token));
    }
    assert!(!contains(&stored, "gAAAAA") && !contains(&stored, "Z0FBQUFB"));
    assert!(
        contains(&stored, "arc1.1."),
        "keys are stored as ciphertext"
    );
    let logs = stack.finish().await;
    for key in all_plaintexts(&fixtures) {
        assert!(!logs.contains(&key));
    }
}

/// The platform's agent tables (as SQLAlchemy creates them on SQLite), with
/// two agents of tenant 1 and one of tenant 2. "Researcher" has three
/// versions (create by alice, update by bob, rollback to version 1 by
/// alice) and moved from provider 1 to 2 and back; "Writer" one version
/// recorded without a user, on provider 5.
async fn add_legacy_agents(legacy: &LegacyCopy) {
    let db = Database::connect(format!("{}?mode=rw", legacy.url()))
        .await
        .expect("open legacy copy");
    let snapshot = |name: &str, role: &str, provider: i64, temperature: f64| {
        serde_json::json!({
            "name": name, "role": role, "goal": "Find the facts", "backstory": "",
            "llm_provider_id": provider, "temperature": temperature, "max_tokens": null,
            "allow_delegation": true, "verbose": false, "cache": true, "max_iter": 15,
            "max_rpm": null, "max_execution_time": null, "allow_code_execution": false,
            "respect_context_window": true, "max_retry_limit": 2
        })
        .to_string()
        .replace('\'', "''")
    };
    let sql = format!(
        "CREATE TABLE users (id INTEGER NOT NULL, created_at DATETIME NOT NULL,
             updated_at DATETIME NOT NULL, tenant_id INTEGER NOT NULL, email VARCHAR(255) NOT NULL,
             full_name VARCHAR(255), role VARCHAR(32) NOT NULL, is_active BOOLEAN NOT NULL,
             PRIMARY KEY (id));
         CREATE TABLE agents (id INTEGER NOT NULL, created_at DATETIME NOT NULL,
             updated_at DATETIME NOT NULL, name VARCHAR(255) NOT NULL, role VARCHAR(255) NOT NULL,
             goal TEXT NOT NULL, backstory TEXT NOT NULL, llm_provider_id INTEGER NOT NULL,
             temperature FLOAT NOT NULL, max_tokens INTEGER, allow_delegation BOOLEAN NOT NULL,
             verbose BOOLEAN NOT NULL, cache BOOLEAN NOT NULL, max_iter INTEGER NOT NULL,
             max_rpm INTEGER, max_execution_time INTEGER, allow_code_execution BOOLEAN NOT NULL,
             respect_context_window BOOLEAN NOT NULL, max_retry_limit INTEGER NOT NULL,
             PRIMARY KEY (id));
         CREATE TABLE agent_versions (id INTEGER NOT NULL, created_at DATETIME NOT NULL,
             updated_at DATETIME NOT NULL, agent_id INTEGER NOT NULL, version_number INTEGER NOT NULL,
             action VARCHAR(8) NOT NULL, changed_by_user_id INTEGER, configuration JSON NOT NULL,
             diff_from_previous JSON, change_description TEXT, PRIMARY KEY (id));
         INSERT INTO users VALUES
             (1, '2025-01-01', '2025-01-01', 1, 'alice@acme.test', 'Alice', 'admin', 1),
             (2, '2025-01-01', '2025-01-01', 1, 'bob@acme.test', 'Bob', 'member', 1);
         INSERT INTO agents VALUES
             (1, '2025-01-02', '2025-01-04', 'Researcher', 'Analyst', 'Find the facts', '', 1,
              0.7, NULL, 1, 0, 1, 15, NULL, NULL, 0, 1, 2),
             (2, '2025-01-02', '2025-01-02', 'Writer', 'Author', 'Find the facts', '', 5,
              0.9, NULL, 1, 0, 1, 15, NULL, NULL, 0, 1, 2),
             (3, '2025-01-02', '2025-01-02', 'Globex Agent', 'Spy', 'Find the facts', '', 6,
              0.7, NULL, 1, 0, 1, 15, NULL, NULL, 0, 1, 2);
         INSERT INTO agent_versions VALUES
             (1, '2025-01-02', '2025-01-02', 1, 1, 'CREATE', 1, '{r1}', NULL, 'Initial agent creation'),
             (2, '2025-01-03', '2025-01-03', 1, 2, 'UPDATE', 2, '{r2}', NULL, 'Agent configuration updated'),
             (3, '2025-01-04', '2025-01-04', 1, 3, 'ROLLBACK', 1, '{r1}', NULL, 'Rolled back to version 1'),
             (4, '2025-01-02', '2025-01-02', 2, 1, 'CREATE', NULL, '{w1}', NULL, NULL),
             (5, '2025-01-02', '2025-01-02', 3, 1, 'CREATE', NULL, '{g1}', NULL, 'Initial agent creation');",
        r1 = snapshot("Researcher", "Analyst", 1, 0.7),
        r2 = snapshot("Researcher", "Analyst", 2, 0.2),
        w1 = snapshot("Writer", "Author", 5, 0.9),
        g1 = snapshot("Globex Agent", "Spy", 6, 0.7),
    );
    db.execute_unprepared(&sql)
        .await
        .expect("the platform's agents");
    db.close().await.expect("close legacy copy");
}

async fn agent_history(c: &mut Clients, agent_id: &str) -> Vec<pb::AgentVersion> {
    let mut versions = c
        .agents
        .list_agent_versions(pb::ListAgentVersionsRequest {
            agent_id: agent_id.to_owned(),
            page_size: 50,
            ..Default::default()
        })
        .await
        .expect("agent versions")
        .into_inner()
        .versions;
    versions.sort_by_key(|v| v.version_number);
    versions
}

#[tokio::test]
async fn agents_come_over_with_their_version_history_on_the_imported_providers() {
    let fixtures = fixtures();
    let stack = Stack::launch(
        legacy_crypto(text(&fixtures, "/legacy/master_secret")),
        Stack::default_registry(),
    )
    .await;
    let legacy = LegacyCopy::new();
    add_legacy_agents(&legacy).await;

    let (status, output) = import(
        &stack,
        &stack.crypto_endpoint,
        &legacy.url(),
        &["--dry-run"],
    )
    .await;
    assert!(status.success(), "{output}");
    let lines = report_lines(&output);
    assert!(
        lines.contains(&"would import agent Researcher (3 versions)"),
        "{output}"
    );
    assert!(
        lines.contains(&"would import agent Writer (1 version)"),
        "{output}"
    );
    assert!(
        lines.contains(
            &"import-fernet (dry run, nothing written): 7 to import, 0 skipped, 0 failed"
        ),
        "{output}"
    );
    assert_eq!(count(&stack, "SELECT COUNT(*) FROM agents").await, 0);

    let (status, output) = import(&stack, &stack.crypto_endpoint, &legacy.url(), &[]).await;
    assert!(status.success(), "{output}");
    let lines = report_lines(&output);
    assert!(
        lines.contains(&"import-fernet: 7 imported, 0 skipped, 0 failed"),
        "{output}"
    );
    assert!(
        !output.contains("Globex Agent"),
        "another tenant's agent: {output}"
    );
    let researcher_line = lines
        .iter()
        .find_map(|l| l.strip_prefix("imported agent Researcher as "))
        .unwrap_or_else(|| panic!("{output}"));
    let (researcher_id, tail) = researcher_line.split_once(' ').expect("id and notes");
    assert_eq!(tail, "(3 versions)");

    let mut c = clients(&stack).await;
    let providers = list_providers(&mut c).await;
    let provider_id = |name: &str| {
        providers
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.id.clone())
            .unwrap_or_else(|| panic!("{name}"))
    };
    let agents = c
        .agents
        .list_agents(pb::ListAgentsRequest {
            page_size: 50,
            ..Default::default()
        })
        .await
        .expect("list agents")
        .into_inner()
        .agents;
    let mut names: Vec<&str> = agents.iter().map(|a| a.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["Researcher", "Writer"]);
    let researcher = agents
        .iter()
        .find(|a| a.name == "Researcher")
        .expect("researcher");
    assert_eq!(researcher.id, researcher_id);
    assert_eq!(researcher.version, 3);
    assert_eq!(researcher.temperature, Some(0.7));
    assert_eq!(researcher.role, "Analyst");
    assert_eq!(researcher.max_iter, Some(15));
    assert_eq!(
        researcher.llm_provider_id.as_deref(),
        Some(provider_id("OpenAI GPT-4").as_str())
    );
    let writer = agents.iter().find(|a| a.name == "Writer").expect("writer");
    assert_eq!(
        writer.llm_provider_id.as_deref(),
        Some(provider_id("Custom Gateway").as_str())
    );

    let history = agent_history(&mut c, researcher_id).await;
    let summary: Vec<(i64, i32, &str, &str)> = history
        .iter()
        .map(|v| {
            (
                v.version_number,
                v.action,
                v.change_description.as_str(),
                v.changed_by.as_str(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                1,
                pb::VersionAction::Create as i32,
                "Initial agent creation",
                "alice@acme.test"
            ),
            (
                2,
                pb::VersionAction::Update as i32,
                "Agent configuration updated",
                "bob@acme.test"
            ),
            (
                3,
                pb::VersionAction::Rollback as i32,
                "Rolled back to version 1",
                "alice@acme.test"
            ),
        ]
    );
    let claude = provider_id("Claude Sonnet");
    let version_2 = history[1].configuration.as_ref().expect("snapshot");
    assert_eq!(version_2.llm_provider_id.as_deref(), Some(claude.as_str()));
    assert_eq!(version_2.temperature, Some(0.2));
    let mut changed: Vec<&str> = history[1].diff.iter().map(|d| d.path.as_str()).collect();
    changed.sort_unstable();
    assert_eq!(changed, ["llm_provider_id", "temperature"]);
    let writer_history = agent_history(&mut c, &writer.id).await;
    assert_eq!(writer_history.len(), 1);
    assert_eq!(writer_history[0].changed_by, SUBJECT, "no user recorded");
    assert_eq!(
        writer_history[0].change_description,
        "Imported from the Python platform"
    );

    // A second run imports nothing new.
    let (status, output) = import(&stack, &stack.crypto_endpoint, &legacy.url(), &[]).await;
    assert!(status.success(), "{output}");
    let lines = report_lines(&output);
    assert!(
        lines.contains(
            &"skipped agent Researcher: an agent with this name already exists in the tenant"
        ),
        "{output}"
    );
    assert!(
        lines.contains(&"import-fernet: 0 imported, 7 skipped, 0 failed"),
        "{output}"
    );
    assert_eq!(count(&stack, "SELECT COUNT(*) FROM agents").await, 2);
    assert_eq!(
        count(&stack, "SELECT COUNT(*) FROM agent_versions").await,
        4
    );
    // The imported versions keep the invariants registry-written ones keep
    // (numbers 1..N, current row = newest snapshot, hash chains), and each
    // is in the audit trail under its platform user.
    let (verified, report) = Process::run_to_exit(
        &binary("registry-service"),
        Launch::default()
            .env("DATABASE_URL", stack.database.url())
            .arg("verify"),
    )
    .await;
    assert!(verified.success(), "{report}");
    assert!(report.contains("0 problems"), "{report}");
    let audited = count(
        &stack,
        &format!(
            "SELECT COUNT(*) FROM audit_events WHERE resource = 'agents/{researcher_id}' \
             AND actor IN ('alice@acme.test', 'bob@acme.test')"
        ),
    )
    .await;
    assert_eq!(audited, 3, "one audit event per imported version");
    stack.finish().await;
}

#[tokio::test]
async fn a_wrong_legacy_secret_fails_every_keyed_row_and_its_agents_and_creates_none_of_them() {
    let fixtures = fixtures();
    let stack = Stack::launch(
        legacy_crypto("not-the-platforms-master-secret"),
        Stack::default_registry(),
    )
    .await;
    let legacy = LegacyCopy::new();
    add_legacy_agents(&legacy).await;

    let (status, output) = import(&stack, &stack.crypto_endpoint, &legacy.url(), &[]).await;
    assert!(!status.success(), "{output}");
    let lines = report_lines(&output);
    for (name, key) in expected_keys(&fixtures) {
        let line = if key.is_some() {
            format!(
                "failed {name}: api_key: token does not authenticate with the legacy key \
                 (another key, or an altered token)"
            )
        } else {
            // A row without a key has nothing to decrypt.
            let id = imported_ids(&output)
                .into_iter()
                .find(|(n, _)| *n == name)
                .map(|(_, id)| id)
                .unwrap_or_else(|| panic!("{name} imported: {output}"));
            format!("imported {name} as {id}")
        };
        assert!(lines.contains(&line.as_str()), "{line}\n{output}");
    }
    assert!(
        lines.contains(
            &"failed agent Researcher: version 1: its provider (legacy id 1) was not imported"
        ),
        "an agent on a provider that failed fails too: {output}"
    );
    assert!(
        lines.contains(
            &"failed agent Writer: version 1: its provider (legacy id 5) was not imported"
        ),
        "{output}"
    );
    assert_eq!(count(&stack, "SELECT COUNT(*) FROM agents").await, 0);
    assert!(
        lines.contains(&"import-fernet: 1 imported, 0 skipped, 6 failed"),
        "{output}"
    );
    assert_eq!(count(&stack, "SELECT COUNT(*) FROM providers").await, 1);
    assert_eq!(
        count(
            &stack,
            "SELECT COUNT(*) FROM providers WHERE api_key_ciphertext IS NOT NULL"
        )
        .await,
        0,
        "no provider without its key"
    );
    assert_eq!(
        count(&stack, "SELECT COUNT(*) FROM provider_versions").await,
        1
    );

    // With the right secret, a second run brings the rest and skips the first.
    let right = start_crypto(
        legacy_crypto(text(&fixtures, "/legacy/master_secret"))
            .env("ENCRYPTION_KEY", STANDARD.encode(STACK_KEY)),
    )
    .await;
    let (status, again) = import(&stack, &right.url(), &legacy.url(), &[]).await;
    assert!(status.success(), "{again}");
    assert!(
        report_lines(&again).contains(&"import-fernet: 6 imported, 1 skipped, 0 failed"),
        "{again}"
    );
    let mut c = clients(&stack).await;
    let claude = list_providers(&mut c)
        .await
        .into_iter()
        .find(|p| p.name == "Claude Sonnet")
        .expect("imported on the second run");
    assert_eq!(
        resolved_key(&mut c, &claude.id, "Claude user").await,
        text(&fixtures, "/api_keys/Claude Sonnet")
    );
    for key in all_plaintexts(&fixtures) {
        assert!(!output.contains(&key) && !again.contains(&key));
        assert!(!right.output().contains(&key));
    }
    right.terminate().await;
    stack.finish().await;
}

#[tokio::test]
async fn without_a_legacy_key_the_import_reports_failed_precondition_and_writes_nothing() {
    let stack = Stack::start().await;
    let legacy = LegacyCopy::new();
    let (status, output) = import(&stack, &stack.crypto_endpoint, &legacy.url(), &[]).await;
    assert!(!status.success(), "{output}");
    assert!(
        output.contains(
            "registry-service: crypto-service answered FAILED_PRECONDITION: no legacy key is \
             configured: set LEGACY_MASTER_SECRET and LEGACY_ENCRYPTION_SALT, or LEGACY_FERNET_KEY"
        ),
        "{output}"
    );
    assert_eq!(count(&stack, "SELECT COUNT(*) FROM providers").await, 0);
    stack.finish().await;
}

#[tokio::test]
async fn several_legacy_tenants_need_the_tenant_named() {
    let stack = Stack::start().await;
    let legacy = LegacyCopy::new();
    let launch = Stack::default_registry()
        .arg("import-fernet")
        .arg("--legacy-database-url")
        .arg(legacy.url())
        .arg("--tenant")
        .arg("initech")
        .env("DATABASE_URL", stack.database.url())
        .env("CRYPTO_ENDPOINT", stack.crypto_endpoint.clone());
    let (status, output) = Process::run_to_exit(&binary("registry-service"), launch).await;
    assert!(!status.success(), "{output}");
    assert!(
        output.contains("--tenant: the Python platform's database holds providers of 2 tenants (1 (acme), 2 (globex))"),
        "{output}"
    );
    assert_eq!(count(&stack, "SELECT COUNT(*) FROM providers").await, 0);
    stack.finish().await;
}

/// `--tenant` and `--subject` are held to a token's rule: no import writes
/// rows under a tenant no token could name, or records a subject no token
/// could carry.
#[tokio::test]
async fn a_tenant_or_subject_no_token_could_carry_is_refused_before_anything_is_read() {
    let stack = Stack::start().await;
    let legacy = LegacyCopy::new();
    let long_tenant = "t".repeat(257);
    for (tenant, subject, expected) in [
        (
            long_tenant.as_str(),
            "import",
            "--tenant: is longer than 256 bytes",
        ),
        ("ac\nme", "import", "--tenant: holds a control character"),
        (
            "acme",
            "import\u{1b}[2J",
            "--subject: holds a control character",
        ),
    ] {
        let launch = Stack::default_registry()
            .arg("import-fernet")
            .arg("--legacy-database-url")
            .arg(legacy.url())
            .arg("--tenant")
            .arg(tenant)
            .arg("--subject")
            .arg(subject)
            .env("DATABASE_URL", stack.database.url())
            .env("CRYPTO_ENDPOINT", stack.crypto_endpoint.clone());
        let (status, output) = Process::run_to_exit(&binary("registry-service"), launch).await;
        assert!(!status.success(), "{expected}: {output}");
        assert!(output.contains(expected), "{expected}: {output}");
    }
    assert_eq!(count(&stack, "SELECT COUNT(*) FROM providers").await, 0);
    assert_eq!(count(&stack, "SELECT COUNT(*) FROM agents").await, 0);
    stack.finish().await;
}

/// The platform on PostgreSQL: `provider_type` a native enum, `config`
/// JSON, booleans, as SQLAlchemy creates them. Runs with TEST_POSTGRES_URL.
#[tokio::test]
async fn a_legacy_postgresql_database_imports_the_same() {
    let Some(admin_url) = std::env::var("TEST_POSTGRES_URL")
        .ok()
        .filter(|url| !url.is_empty())
    else {
        eprintln!("TEST_POSTGRES_URL is not set: skipped");
        return;
    };
    let fixtures = fixtures();
    let legacy_name = format!("legacy_test_{}", random_hex());
    let admin = Database::connect(&admin_url).await.expect("connect");
    admin
        .execute_unprepared(&format!("CREATE DATABASE {legacy_name}"))
        .await
        .expect("create legacy database");
    let legacy_url = with_database(&admin_url, &legacy_name);
    copy_fixture_to_postgres(&legacy_url).await;

    let stack = Stack::launch(
        legacy_crypto(text(&fixtures, "/legacy/master_secret")),
        Stack::default_registry(),
    )
    .await;
    let (status, output) = import(&stack, &stack.crypto_endpoint, &legacy_url, &[]).await;
    assert!(status.success(), "{output}");
    assert!(
        report_lines(&output).contains(&"import-fernet: 5 imported, 0 skipped, 0 failed"),
        "{output}"
    );
    let mut c = clients(&stack).await;
    let providers = list_providers(&mut c).await;
    for (index, (name, key)) in expected_keys(&fixtures).into_iter().enumerate() {
        let provider = providers
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("{name}"));
        assert_eq!(
            resolved_key(&mut c, &provider.id, &format!("Agent {index}")).await,
            key.unwrap_or_default()
        );
    }
    stack.finish().await;
    let _ = admin
        .execute_unprepared(&format!(
            "DROP DATABASE IF EXISTS {legacy_name} WITH (FORCE)"
        ))
        .await;
}

async fn copy_fixture_to_postgres(url: &str) {
    let target = Database::connect(url).await.expect("connect legacy pg");
    target
        .execute_unprepared(
            "CREATE TYPE llmprovidertype AS ENUM ('OPENAI', 'ANTHROPIC', 'OLLAMA', 'VLLM', 'CUSTOM');
             CREATE TABLE tenants (
                 id SERIAL NOT NULL, created_at TIMESTAMP WITHOUT TIME ZONE NOT NULL,
                 updated_at TIMESTAMP WITHOUT TIME ZONE NOT NULL, name VARCHAR(255) NOT NULL,
                 schema_name VARCHAR(63) NOT NULL, status VARCHAR(32) NOT NULL,
                 PRIMARY KEY (id), UNIQUE (schema_name));
             CREATE TABLE llm_providers (
                 id SERIAL NOT NULL, created_at TIMESTAMP WITHOUT TIME ZONE NOT NULL,
                 updated_at TIMESTAMP WITHOUT TIME ZONE NOT NULL, tenant_id INTEGER NOT NULL,
                 name VARCHAR(255) NOT NULL, provider_type llmprovidertype NOT NULL,
                 model_name VARCHAR(255) NOT NULL, api_base VARCHAR(255), api_key VARCHAR(255),
                 config JSON NOT NULL, is_active BOOLEAN NOT NULL, is_default BOOLEAN NOT NULL,
                 PRIMARY KEY (id), FOREIGN KEY(tenant_id) REFERENCES tenants (id));",
        )
        .await
        .expect("create the platform's tables");
    let source = Database::connect(format!("sqlite://{FIXTURE_DB}?mode=ro"))
        .await
        .expect("open fixture");
    let backend = target.get_database_backend();
    let tenants = source
        .query_all_raw(Statement::from_string(
            source.get_database_backend(),
            "SELECT id, name, schema_name FROM tenants ORDER BY id".to_owned(),
        ))
        .await
        .expect("read tenants");
    for row in tenants {
        target
            .execute_raw(Statement::from_sql_and_values(
                backend,
                "INSERT INTO tenants (id, created_at, updated_at, name, schema_name, status) \
                 VALUES ($1, now(), now(), $2, $3, 'active')",
                [
                    row.try_get::<i32>("", "id").expect("id").into(),
                    row.try_get::<String>("", "name").expect("name").into(),
                    row.try_get::<String>("", "schema_name")
                        .expect("schema")
                        .into(),
                ],
            ))
            .await
            .expect("insert tenant");
    }
    let providers = source
        .query_all_raw(Statement::from_string(
            source.get_database_backend(),
            "SELECT id, tenant_id, name, provider_type, model_name, api_base, api_key, config, \
             is_active, is_default FROM llm_providers ORDER BY id"
                .to_owned(),
        ))
        .await
        .expect("read providers");
    for row in providers {
        target
            .execute_raw(Statement::from_sql_and_values(
                backend,
                "INSERT INTO llm_providers (id, created_at, updated_at, tenant_id, name, \
                 provider_type, model_name, api_base, api_key, config, is_active, is_default) \
                 VALUES ($1, now(), now(), $2, $3, $4::llmprovidertype, $5, $6, $7, $8::json, $9, $10)",
                [
                    row.try_get::<i32>("", "id").expect("id").into(),
                    row.try_get::<i32>("", "tenant_id").expect("tenant").into(),
                    row.try_get::<String>("", "name").expect("name").into(),
                    row.try_get::<String>("", "provider_type")
                        .expect("type")
                        .into(),
                    row.try_get::<String>("", "model_name").expect("model").into(),
                    row.try_get::<Option<String>>("", "api_base")
                        .expect("base")
                        .into(),
                    row.try_get::<Option<String>>("", "api_key")
                        .expect("key")
                        .into(),
                    row.try_get::<String>("", "config").expect("config").into(),
                    row.try_get::<bool>("", "is_active").expect("active").into(),
                    row.try_get::<bool>("", "is_default").expect("default").into(),
                ],
            ))
            .await
            .expect("insert provider");
    }
    source.close().await.expect("close fixture");
    target.close().await.expect("close legacy pg");
}

fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let prefix = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    format!("{prefix}/{name}{query}")
}

fn random_hex() -> String {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("random");
    hex::encode(bytes)
}

// ---------------------------------------------------------------- crypto-service

async fn crypto_client(process: &Process) -> CryptoServiceClient<tonic::transport::Channel> {
    CryptoServiceClient::new(process.channel().await)
}

fn item(token: &str, aad: &[u8]) -> ImportFernetItem {
    ImportFernetItem {
        token: token.to_owned(),
        associated_data: aad.to_vec(),
    }
}

#[tokio::test]
async fn import_fernet_reencrypts_bound_to_the_associated_data_and_reports_each_bad_token() {
    let fixtures = fixtures();
    let plaintext = text(&fixtures, "/tokens/plaintext");
    let crypto = start_crypto(
        Launch::default()
            .env("ENCRYPTION_KEY", STANDARD.encode([0x11; 32]))
            .env("LEGACY_FERNET_KEY", text(&fixtures, "/legacy/fernet_key")),
    )
    .await;
    let mut client = crypto_client(&crypto).await;
    let aad = b"tenant=acme|provider=p1";
    let response = client
        .import_fernet(ImportFernetRequest {
            items: vec![
                item(text(&fixtures, "/tokens/stored"), aad),
                item(text(&fixtures, "/tokens/plain"), b"other"),
                item(text(&fixtures, "/tokens/other_key"), aad),
                item(text(&fixtures, "/tokens/bad_padding"), aad),
                item(text(&fixtures, "/tokens/version_0x81"), aad),
                item(text(&fixtures, "/tokens/empty"), aad),
                item("sk-plaintext-is-not-a-token", aad),
                item("", aad),
            ],
        })
        .await
        .expect("import")
        .into_inner();
    let outcomes: Vec<_> = response
        .results
        .into_iter()
        .map(|r| r.outcome.expect("outcome"))
        .collect();
    assert_eq!(outcomes.len(), 8);
    let import_fernet_result::Outcome::Encrypted(first) = &outcomes[0] else {
        panic!("{:?}", outcomes[0]);
    };
    let import_fernet_result::Outcome::Encrypted(second) = &outcomes[1] else {
        panic!("{:?}", outcomes[1]);
    };
    assert!(first.ciphertext.starts_with("arc1.1.") && first.key_version == 1);
    let errors: Vec<String> = outcomes[2..]
        .iter()
        .map(|outcome| match outcome {
            import_fernet_result::Outcome::Error(error) => error.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        errors,
        [
            "token does not authenticate with the legacy key (another key, or an altered token)",
            "token authenticates but its padding is invalid",
            "not a Fernet token: unknown version byte",
            "the token holds an empty value",
            "not a Fernet token: not URL-safe base64",
            "token is empty",
        ]
    );

    // The new ciphertexts open with their own associated data only.
    for (ciphertext, bound, wrong) in [
        (&first.ciphertext, &aad[..], &b"tenant=acme|provider=p2"[..]),
        (&second.ciphertext, &b"other"[..], &aad[..]),
    ] {
        let opened = client
            .decrypt(DecryptRequest {
                ciphertext: ciphertext.clone(),
                associated_data: bound.to_vec(),
            })
            .await
            .expect("decrypt")
            .into_inner();
        assert_eq!(opened.plaintext, plaintext.as_bytes());
        let refused = client
            .decrypt(DecryptRequest {
                ciphertext: ciphertext.clone(),
                associated_data: wrong.to_vec(),
            })
            .await
            .expect_err("another associated data");
        assert_eq!(refused.code(), Code::InvalidArgument);
    }

    let empty = client
        .import_fernet(ImportFernetRequest { items: vec![] })
        .await
        .expect_err("empty batch");
    assert_eq!(empty.code(), Code::InvalidArgument);
    let (_, logs) = crypto.terminate().await;
    assert!(!logs.contains(plaintext), "plaintext logged");
    assert!(!logs.contains(text(&fixtures, "/legacy/fernet_key")));
}

#[tokio::test]
async fn import_fernet_without_a_legacy_key_is_failed_precondition() {
    let crypto =
        start_crypto(Launch::default().env("ENCRYPTION_KEY", STANDARD.encode([0x11; 32]))).await;
    let fixtures = fixtures();
    let status = crypto_client(&crypto)
        .await
        .import_fernet(ImportFernetRequest {
            items: vec![item(text(&fixtures, "/tokens/plain"), b"")],
        })
        .await
        .expect_err("no legacy key");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(
        status
            .get_details_error_info()
            .map(|info| info.reason)
            .unwrap_or_default(),
        "LEGACY_KEY_NOT_CONFIGURED"
    );
    crypto.terminate().await;
}

#[tokio::test]
async fn bad_legacy_settings_stop_crypto_service_with_one_line_naming_them() {
    let key = STANDARD.encode([0x11; 32]);
    let short = URL_SAFE.encode([0x33; 20]);
    for (vars, expected) in [
        (
            vec![("LEGACY_FERNET_KEY", short.as_str())],
            "LEGACY_FERNET_KEY: must be base64 of exactly 32 bytes (a Fernet key), got 20 bytes",
        ),
        (
            vec![("LEGACY_MASTER_SECRET", "legacy-secret-value")],
            "LEGACY_ENCRYPTION_SALT: is required with LEGACY_MASTER_SECRET",
        ),
        (
            vec![
                ("LEGACY_FERNET_KEY", key.as_str()),
                ("LEGACY_MASTER_SECRET", "legacy-secret-value"),
                ("LEGACY_ENCRYPTION_SALT", "legacy-salt-value"),
            ],
            "LEGACY_MASTER_SECRET: conflicts with LEGACY_FERNET_KEY",
        ),
    ] {
        let mut launch = Launch::default()
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--insecure-dev-callers")
            .env("ENCRYPTION_KEY", key.clone());
        for (name, value) in &vars {
            launch = launch.env(*name, *value);
        }
        let (status, output) = Process::run_to_exit(&binary("crypto-service"), launch).await;
        assert!(!status.success(), "{output}");
        let line = output
            .lines()
            .find(|line| line.starts_with("crypto-service: "))
            .unwrap_or_else(|| panic!("{output}"));
        assert!(
            line.starts_with(&format!("crypto-service: {expected}")),
            "{line}"
        );
        for (_, value) in &vars {
            assert!(!output.contains(value), "{value} echoed: {output}");
        }
    }
}
