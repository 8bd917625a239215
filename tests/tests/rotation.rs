//! Key rotation end to end: a keyring file reloaded on SIGHUP, every stored
//! credential (current rows and every version snapshot) rewrapped to the
//! new version while clients keep writing, retirement only once nothing uses
//! a version, a rewrap job killed half-way and resumed, and the key canary
//! catching a crypto-service started with the wrong key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use proto::v1 as pb;
use tests::auth::Authed;
use tests::health::wait_for_status;
use tests::stack::{Stack, TestDatabase, start_registry, start_registry_on_crypto_socket};
use tests::{Launch, Process, binary, start_crypto};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

const DEADLINE: Duration = Duration::from_secs(60);
const V1: [u8; 32] = [0x31; 32];
const V2: [u8; 32] = [0x32; 32];

fn write_keyring(path: &Path, versions: &[(u32, [u8; 32])]) {
    let keys: Vec<serde_json::Value> = versions
        .iter()
        .map(|(v, k)| serde_json::json!({"version": v, "key": STANDARD.encode(k)}))
        .collect();
    std::fs::write(path, serde_json::json!({ "keys": keys }).to_string()).expect("keyring file");
}

struct Clients {
    agents: pb::agent_service_client::AgentServiceClient<Authed>,
    providers: pb::provider_service_client::ProviderServiceClient<Authed>,
    runtime: pb::runtime_service_client::RuntimeServiceClient<Authed>,
    keys: pb::key_service_client::KeyServiceClient<Authed>,
}

async fn clients(stack: &Stack) -> Clients {
    let channel = stack
        .channel_as(
            tests::auth::STACK_OPERATOR,
            "acme",
            &["admin", "editor", "runtime", "platform-operator"],
        )
        .await;
    Clients {
        agents: pb::agent_service_client::AgentServiceClient::new(channel.clone()),
        providers: pb::provider_service_client::ProviderServiceClient::new(channel.clone()),
        runtime: pb::runtime_service_client::RuntimeServiceClient::new(channel.clone()),
        keys: pb::key_service_client::KeyServiceClient::new(channel),
    }
}

/// Creates a provider with `key`, rotates it to `key`+"-2" (two snapshots
/// with keys), and an agent assigned to it. Returns (agent id, final key).
async fn provider_with_history(c: &mut Clients, name: &str) -> (String, String) {
    let provider = c
        .providers
        .create_provider(pb::CreateProviderRequest {
            provider: Some(pb::Provider {
                name: name.to_owned(),
                provider_type: pb::ProviderType::Openai.into(),
                model_name: "gpt-4".into(),
                api_key: format!("sk-{name}-1"),
                ..Default::default()
            }),
            change_description: String::new(),
            ..Default::default()
        })
        .await
        .expect("create provider")
        .into_inner();
    let key = format!("sk-{name}-2");
    c.providers
        .update_provider(pb::UpdateProviderRequest {
            provider: Some(pb::Provider {
                id: provider.id.clone(),
                api_key: key.clone(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["api_key".into()],
            }),
            change_description: String::new(),
            revoke_replaced_key: false,
            ..Default::default()
        })
        .await
        .expect("rotate provider key");
    let agent = c
        .agents
        .create_agent(pb::CreateAgentRequest {
            agent: Some(pb::Agent {
                name: format!("agent-{name}"),
                role: "r".into(),
                goal: "g".into(),
                llm_provider_id: Some(provider.id),
                ..Default::default()
            }),
            change_description: String::new(),
            ..Default::default()
        })
        .await
        .expect("create agent")
        .into_inner();
    (agent.id, key)
}

async fn status(c: &mut Clients) -> pb::KeyStatus {
    c.keys
        .get_key_status(pb::GetKeyStatusRequest {})
        .await
        .expect("key status")
        .into_inner()
}

fn stored_on(status: &pb::KeyStatus, version: u32) -> u64 {
    status
        .versions
        .iter()
        .find(|v| v.version == version)
        .map_or(0, |v| v.stored_values)
}

/// Sends SIGHUP to crypto-service and waits until `version` is active.
async fn reload_until_active(crypto: &Process, c: &mut Clients, version: u32) {
    crypto.signal("HUP");
    let reached = tokio::time::timeout(DEADLINE, async {
        while status(c).await.active_version != version {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(
        reached.is_ok(),
        "crypto-service never reloaded to version {version}"
    );
}

/// Every stored ciphertext, read from the tables (current rows, version
/// snapshots, the canary). Raw file bytes would also show the superseded
/// copies SQLite keeps in its WAL until a checkpoint.
async fn stored_ciphertexts(database: &TestDatabase) -> Vec<String> {
    let mut found = database
        .texts("SELECT api_key_ciphertext FROM providers")
        .await;
    found.extend(database.texts("SELECT ciphertext FROM key_canary").await);
    for snapshot in database
        .texts("SELECT CAST(configuration AS TEXT) FROM provider_versions")
        .await
    {
        let json: serde_json::Value = serde_json::from_str(&snapshot).expect("snapshot json");
        if let Some(key) = json.get("api_key").and_then(serde_json::Value::as_str) {
            found.push(key.to_owned());
        }
    }
    assert!(!found.is_empty());
    found
}

async fn start_rotating_stack(dir: &Path) -> (Stack, PathBuf) {
    let keyring = dir.join("keyring.json");
    write_keyring(&keyring, &[(1, V1)]);
    let crypto = Launch::default().env("ENCRYPTION_KEYRING_FILE", keyring.display().to_string());
    // Stack::launch also sets ENCRYPTION_KEY; the keyring file must be the
    // only source, so start crypto-service here and the registry over it.
    let crypto = start_crypto(crypto).await;
    let database = TestDatabase::fresh().await;
    let registry = start_registry(&database, &crypto.url(), Stack::default_registry()).await;
    let stack = Stack {
        crypto_endpoint: crypto.url(),
        crypto: Some(crypto),
        registry,
        database,
    };
    // Ready means the key canary is written: the counts below include it.
    wait_for_status(stack.channel().await, "", ServingStatus::Serving).await;
    (stack, keyring)
}

#[tokio::test]
async fn rotation_rewraps_every_value_while_clients_write_and_then_retires_the_old_version() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (stack, keyring) = start_rotating_stack(dir.path()).await;
    let mut c = clients(&stack).await;

    let mut expected: BTreeMap<String, String> = BTreeMap::new();
    for i in 0..200 {
        let (agent, key) = provider_with_history(&mut c, &format!("p{i:03}")).await;
        expected.insert(agent, key);
    }
    let before = status(&mut c).await;
    assert_eq!(before.active_version, 1);
    // 200 current keys + 400 snapshots + the canary.
    assert_eq!(stored_on(&before, 1), 601, "{before:?}");

    write_keyring(&keyring, &[(1, V1), (2, V2)]);
    let crypto = stack.crypto.as_ref().expect("crypto");
    reload_until_active(crypto, &mut c, 2).await;

    let status_code = c
        .keys
        .retire_key_version(pb::RetireKeyVersionRequest { version: 1 })
        .await
        .expect_err("v1 still protects values")
        .code();
    assert_eq!(status_code, Code::FailedPrecondition);

    // A client keeps writing while the job runs.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let mut writer_clients = clients(&stack).await;
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let mut written = BTreeMap::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) || i < 5 {
                let (agent, key) =
                    provider_with_history(&mut writer_clients, &format!("w{i:03}")).await;
                written.insert(agent, key);
                i += 1;
            }
            written
        })
    };
    let first = c
        .keys
        .rewrap_credentials(pb::RewrapCredentialsRequest {
            batch_size: 25,
            max_values: 0,
        })
        .await
        .expect("rewrap")
        .into_inner();
    stop.store(true, Ordering::Relaxed);
    expected.extend(writer.await.expect("writer"));
    assert_eq!(first.active_version, 2);
    assert!(first.rewrapped >= 601, "{first:?}");
    assert_eq!(first.remaining, 0, "{first:?}");

    let second = c
        .keys
        .rewrap_credentials(pb::RewrapCredentialsRequest {
            batch_size: 100,
            max_values: 0,
        })
        .await
        .expect("rewrap again")
        .into_inner();
    assert_eq!(
        (second.rewrapped, second.remaining),
        (0, 0),
        "the second run changes nothing: {second:?}"
    );
    assert_eq!(second.already_current, second.scanned);

    let after = status(&mut c).await;
    assert_eq!(stored_on(&after, 1), 0, "{after:?}");
    for ciphertext in stored_ciphertexts(&stack.database).await {
        assert!(
            ciphertext.starts_with("arc1.2."),
            "a value left on an old version: {ciphertext}"
        );
    }
    for (agent, key) in &expected {
        let resolved = c
            .runtime
            .resolve_agent(pb::ResolveAgentRequest {
                agent_id: agent.clone(),
                version_number: None,
                if_none_match: String::new(),
                label: String::new(),
            })
            .await
            .expect("resolve")
            .into_inner();
        assert_eq!(&resolved.api_key, key, "agent {agent}");
    }
    // Rolling a provider back restores a snapshot key that was rewrapped too.
    let one = c
        .providers
        .list_providers(pb::ListProvidersRequest {
            page_size: 1,
            page_token: String::new(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .providers
        .remove(0);
    c.providers
        .rollback_provider(pb::RollbackProviderRequest {
            provider_id: one.id,
            version_number: 1,
            ..Default::default()
        })
        .await
        .expect("rollback to a rewrapped snapshot");

    let retired = c
        .keys
        .retire_key_version(pb::RetireKeyVersionRequest { version: 1 })
        .await
        .expect("v1 protects nothing now")
        .into_inner();
    assert!(
        retired.versions.iter().all(|v| v.version != 1),
        "{retired:?}"
    );
    let active = c
        .keys
        .retire_key_version(pb::RetireKeyVersionRequest { version: 2 })
        .await
        .expect_err("the active version cannot be retired");
    assert_eq!(active.code(), Code::FailedPrecondition);
    stack.finish().await;
}

#[tokio::test]
async fn a_rewrap_job_killed_half_way_finishes_when_run_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (stack, keyring) = start_rotating_stack(dir.path()).await;
    let mut c = clients(&stack).await;
    let mut expected = BTreeMap::new();
    for i in 0..200 {
        let (agent, key) = provider_with_history(&mut c, &format!("k{i:03}")).await;
        expected.insert(agent, key);
    }
    write_keyring(&keyring, &[(1, V1), (2, V2)]);
    let crypto = stack.crypto.as_ref().expect("crypto");
    reload_until_active(crypto, &mut c, 2).await;

    let job = || {
        Launch::default()
            .env("DATABASE_URL", stack.database.url())
            .env("CRYPTO_ENDPOINT", stack.crypto_endpoint.clone())
            .arg("rewrap-credentials")
            .arg("--batch-size")
            .arg("5")
    };
    // Start the job, wait for its first progress lines, kill it.
    let first =
        Process::start_until(&binary("registry-service"), job(), "progress: scanned 10 ").await;
    first.kill().await;
    let partial = status(&mut c).await;
    assert!(
        stored_on(&partial, 1) > 0,
        "killed before the end: {partial:?}"
    );
    assert!(
        stored_on(&partial, 2) > 0,
        "but after some progress: {partial:?}"
    );

    let (exit, output) = Process::run_to_exit(&binary("registry-service"), job()).await;
    assert!(exit.success(), "{output}");
    assert!(output.contains("remaining 0"), "{output}");
    let after = status(&mut c).await;
    assert_eq!(stored_on(&after, 1), 0, "{after:?}");
    for (agent, key) in &expected {
        let resolved = c
            .runtime
            .resolve_agent(pb::ResolveAgentRequest {
                agent_id: agent.clone(),
                version_number: None,
                if_none_match: String::new(),
                label: String::new(),
            })
            .await
            .expect("resolve")
            .into_inner();
        assert_eq!(&resolved.api_key, key);
    }
    stack.finish().await;
}

#[tokio::test]
async fn a_crypto_service_with_the_wrong_key_makes_the_registry_not_ready_with_one_log_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("crypto.sock");
    let crypto_with = |key: [u8; 32]| {
        Launch::default()
            .env("ENCRYPTION_KEY", STANDARD.encode(key))
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
    };
    let right = start_crypto(crypto_with(V1)).await;
    let database = TestDatabase::fresh().await;
    let registry = start_registry_on_crypto_socket(&database, &socket).await;
    let channel = registry.channel().await;
    wait_for_status(channel.clone(), "", ServingStatus::Serving).await;
    assert_eq!(
        database.count("SELECT COUNT(*) FROM key_canary").await,
        1,
        "the canary was written"
    );

    right.kill().await;
    let _wrong = start_crypto(crypto_with(V2)).await;
    wait_for_status(channel.clone(), "", ServingStatus::NotServing).await;
    let (_, logs) = registry.terminate().await;
    assert_eq!(logs.matches("holds the wrong key").count(), 1, "{logs}");
    database.drop_database().await;
}

/// What RetireKeyVersion's count rests on: while crypto-service retires a
/// version, no write can reach a place a stored value lives (a provider
/// row, a version snapshot, the canary), and a locking write cannot read
/// its row to change it either; reads go on. Without this hold, a rollback
/// that read a snapshot before the rewrap job moved it could store the old
/// ciphertext between the count and the retire, under a key no keyring
/// would hold any more. The retire's audit event commits with it: one
/// event for a retire carried out, none for one refused by the count or
/// failed in crypto-service.
#[tokio::test]
async fn no_stored_value_can_change_while_a_key_version_is_retired() {
    use registry_service::store::audit::{Action, Entry};
    use registry_service::store::{self, keys};
    let event = |version: u32| {
        let details = serde_json::json!({ "version": version });
        Entry::platform("operator-1", Action::KeyVersionRetire, details)
    };

    let database = TestDatabase::fresh().await;
    let db = store::connect(&store::DatabaseSettings {
        url: database.url(),
        max_connections: 2,
        acquire_timeout: Duration::from_secs(5),
        sqlite_cache_mib: 2,
    })
    .await
    .expect("connect");
    store::migrate_up(&db).await.expect("migrate");
    let probe = LockProbe::open(&database).await;
    let writers = probe.writers();
    for writer in &writers {
        probe.run(writer).await.expect("a writer before the retire");
    }

    // crypto-service failing the retire: nothing recorded.
    let failed = keys::retire_unused::<(), _>(&db, 2, event(2), || async {
        Err(registry_service::Error::Unavailable {
            dependency: "crypto-service",
            detail: "down".to_owned(),
        })
    })
    .await
    .expect_err("crypto-service failed");
    assert!(
        matches!(failed, registry_service::Error::Unavailable { .. }),
        "{failed:?}"
    );
    assert_eq!(retire_events(&probe).await, Vec::<String>::new());

    let answer = keys::retire_unused(&db, 1, event(1), || async {
        for writer in &writers {
            let refused = probe.run(writer).await.expect_err(writer);
            assert!(probe.is_lock_wait(&refused), "{writer}: {refused}");
        }
        probe
            .run("SELECT COUNT(*) FROM provider_versions")
            .await
            .expect("a read during the retire");
        Ok("retired")
    })
    .await
    .expect("nothing is stored under version 1");
    assert_eq!(answer, "retired");
    for writer in &writers {
        probe.run(writer).await.expect("a writer after the retire");
    }
    let recorded = vec![r#"operator-1 {"version":1}"#.to_owned()];
    assert_eq!(retire_events(&probe).await, recorded);

    // One value under version 1: refused, and crypto-service never asked.
    database
        .execute(
            "INSERT INTO key_canary (id, ciphertext, create_time) \
             VALUES ('canary', 'arc1.1.c2VhbGVk', '2026-12-07T00:00:00Z')",
        )
        .await;
    let refused = keys::retire_unused::<(), _>(&db, 1, event(1), || async {
        panic!("crypto-service was asked to retire a version in use")
    })
    .await
    .expect_err("version 1 protects the canary");
    assert!(
        matches!(
            refused,
            registry_service::Error::FailedPrecondition {
                reason: "KEY_VERSION_IN_USE",
                ..
            }
        ),
        "{refused:?}"
    );
    assert_eq!(retire_events(&probe).await, recorded, "nothing more");
    db.close().await.expect("close");
    database.drop_database().await;
}

/// The actor and details of every KEY_VERSION_RETIRE event stored, in order.
async fn retire_events(probe: &LockProbe) -> Vec<String> {
    use sea_orm::{ConnectionTrait, Statement};
    let sql = "SELECT actor, details FROM audit_events \
               WHERE action = 'KEY_VERSION_RETIRE' ORDER BY id";
    let statement = Statement::from_string(probe.db.get_database_backend(), sql);
    let rows = probe.db.query_all_raw(statement).await.expect("the events");
    rows.iter()
        .map(|row| {
            let actor: String = row.try_get("", "actor").expect("actor");
            let details: serde_json::Value = row.try_get("", "details").expect("details");
            format!("{actor} {details}")
        })
        .collect()
}

/// One connection of its own to the test database that waits for no lock
/// (SQLite: a busy timeout of 0; PostgreSQL: a lock timeout of 50 ms).
struct LockProbe {
    db: sea_orm::DatabaseConnection,
    postgres: bool,
}

impl LockProbe {
    async fn open(database: &TestDatabase) -> Self {
        use sea_orm::ConnectionTrait;
        let mut options = sea_orm::ConnectOptions::new(database.url());
        options.max_connections(1).min_connections(1);
        let db = sea_orm::Database::connect(options).await.expect("connect");
        let postgres = database.is_postgres();
        let no_wait = if postgres {
            "SET lock_timeout = '50ms'"
        } else {
            "PRAGMA busy_timeout = 0"
        };
        db.execute_unprepared(no_wait).await.expect("no wait");
        Self { db, postgres }
    }

    /// A statement of each kind of writer of the places values live: the
    /// locking path's first step and a write to each table.
    fn writers(&self) -> Vec<&'static str> {
        let locking_read = if self.postgres {
            "SELECT id FROM providers FOR UPDATE"
        } else {
            // On SQLite the locking path starts by taking the write lock.
            "BEGIN IMMEDIATE; ROLLBACK"
        };
        vec![
            locking_read,
            "UPDATE providers SET name = name WHERE id = 'none'",
            "UPDATE provider_versions SET change_description = change_description WHERE id = -1",
            "UPDATE key_canary SET ciphertext = ciphertext WHERE id = 'none'",
        ]
    }

    async fn run(&self, sql: &str) -> Result<(), sea_orm::DbErr> {
        use sea_orm::ConnectionTrait;
        self.db.execute_unprepared(sql).await.map(|_| ())
    }

    /// Whether `error` is the database refusing to wait for a lock.
    fn is_lock_wait(&self, error: &sea_orm::DbErr) -> bool {
        let text = error.to_string();
        if self.postgres {
            text.contains("lock timeout")
        } else {
            text.contains("database is locked")
        }
    }
}
