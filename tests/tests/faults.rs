//! Faults under load, end to end: concurrent writers keep calling a real
//! registry while one of its dependencies fails underneath it —
//! crypto-service SIGKILLed and started again, PostgreSQL stopped and
//! started again (a private cluster), the SQLite file write-locked by another
//! process. Each test checks that callers only ever see a retryable
//! UNAVAILABLE, that no call hangs, that the registry recovers without a
//! restart, and that the database holds exactly what was acknowledged (and
//! passes `registry-service verify`).
//!
//! Every wait is on a condition with a deadline, never a sleep.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use proto::v1 as pb;
use proto::v1::agent_service_client::AgentServiceClient;
use proto::v1::provider_service_client::ProviderServiceClient;
use proto::v1::runtime_service_client::RuntimeServiceClient;
use sea_orm::{ConnectionTrait, Database};
use tests::auth::{self, Authed};
use tests::health::{check, wait_for_status};
use tests::pgcluster::PgCluster;
use tests::stack::{
    STACK_KEY, Stack, TestDatabase, crypto_on_socket, start_registry,
    start_registry_on_crypto_socket,
};
use tests::{Launch, Process, binary, start_crypto};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::watch;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;

/// Concurrent writers per test.
const WRITERS: usize = 8;
/// How long any phase of a test may take to reach its condition.
const DEADLINE: Duration = Duration::from_secs(30);
/// A single call that takes longer than this hangs: the test fails.
const CALL_DEADLINE: Duration = Duration::from_secs(15);

#[tokio::test]
async fn crypto_service_killed_and_restarted_under_writers_loses_and_invents_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("crypto.sock");
    let crypto = start_crypto(crypto_on_socket(&socket)).await;
    let database = TestDatabase::fresh().await;
    let registry = start_registry_on_crypto_socket(&database, &socket).await;
    let channel = registry.channel().await;
    // Ready = the key canary is written, so crypto holds no surprise later.
    wait_for_status(channel.clone(), "", ServingStatus::Serving).await;
    let clients = Clients::new(channel.clone());

    let mut writers = Vec::new();
    let fault = Arc::new(Fault::new());
    for writer in 0..WRITERS {
        let mut c = clients.clone();
        let provider = c
            .create_provider(&format!("base-{writer}"), &key(writer, 0))
            .await
            .expect("create the writer's provider");
        let agent = c
            .create_agent(&format!("agent-{writer}"), Some(&provider.id))
            .await
            .expect("create the writer's agent");
        let fault = Arc::clone(&fault);
        writers.push(tokio::spawn(async move {
            crypto_writer(writer, c, provider.id, agent.id, &fault).await
        }));
    }

    fault
        .wait("writes flowing", |p| p.ok[BEFORE] >= 2 * WRITERS)
        .await;
    // DOWN from just before the kill: a call counted in DOWN may still have
    // succeeded, but none counted in BEFORE can have met the outage.
    fault.enter(DOWN);
    crypto.kill().await;
    fault
        .wait("every writer saw crypto-service down", |p| {
            p.unavailable_by_writer.len() == WRITERS
        })
        .await;
    let crypto = start_crypto(crypto_on_socket(&socket)).await;
    fault.enter(BACK);
    fault
        .wait("every writer succeeded again", |p| {
            p.ok_back_by_writer.len() == WRITERS
        })
        .await;
    fault.stop.store(true, Ordering::SeqCst);
    let mut logs = Vec::new();
    for writer in writers {
        logs.push(writer.await.expect("writer task"));
    }

    let progress = fault.progress.borrow().clone();
    fault.assert_only_unavailable(&registry.output());
    assert!(
        progress.unavailable[DOWN] >= 1,
        "no call failed while crypto-service was down: {progress:?}"
    );
    assert!(
        progress.ok[BACK] >= 1,
        "no call needing crypto-service succeeded after it came back: {progress:?}"
    );

    // No partial writes: exactly the acknowledged providers exist, each
    // with its key; each writer's provider and agent have one version row
    // per acknowledged change, numbered 1..N.
    let mut acknowledged: BTreeSet<String> = (0..WRITERS).map(|w| format!("base-{w}")).collect();
    let mut refused = BTreeSet::new();
    for log in &logs {
        acknowledged.extend(log.created.iter().cloned());
        refused.extend(log.not_created.iter().cloned());
    }
    assert!(!refused.is_empty(), "some CreateProvider failed: {logs:?}");
    let stored: BTreeSet<String> = database
        .texts("SELECT name FROM providers")
        .await
        .into_iter()
        .collect();
    assert_eq!(
        stored, acknowledged,
        "stored providers = acknowledged creates"
    );
    let keyed: BTreeSet<String> = database
        .texts("SELECT name FROM providers WHERE api_key_ciphertext IS NOT NULL")
        .await
        .into_iter()
        .collect();
    assert_eq!(keyed, acknowledged, "every stored provider has its key");
    assert!(
        logs.iter().all(|log| log.keys_reported_set),
        "every acknowledged create answered api_key_set"
    );
    let single_versions = database
        .count(
            "SELECT COUNT(*) FROM providers p WHERE p.name NOT LIKE 'base-%' AND p.version = 1 \
             AND (SELECT COUNT(*) FROM provider_versions v WHERE v.provider_id = p.id) = 1",
        )
        .await;
    assert_eq!(
        usize::try_from(single_versions).expect("count"),
        acknowledged.len() - WRITERS,
        "each created provider has exactly version 1"
    );
    for log in &logs {
        assert_versions(
            &database,
            "provider",
            &log.provider_id,
            1 + log.provider_updates,
        )
        .await;
        assert_versions(&database, "agent", &log.agent_id, 1 + log.agent_updates).await;
    }

    assert_verify_passes(&database).await;

    // ResolveAgent hands out the newest acknowledged key of each writer.
    let mut c = clients.clone();
    for log in &logs {
        let resolved = c
            .runtime
            .resolve_agent(pb::ResolveAgentRequest {
                agent_id: log.agent_id.clone(),
                version_number: None,
                if_none_match: String::new(),
                label: String::new(),
            })
            .await
            .expect("resolve")
            .into_inner();
        assert_eq!(resolved.api_key, log.last_key, "writer {}", log.writer);
        assert_eq!(resolved.provider_version, 1 + log.provider_updates);
        assert_eq!(resolved.agent_version, 1 + log.agent_updates);
    }

    registry.terminate().await;
    crypto.terminate().await;
    database.drop_database().await;
}

#[tokio::test]
async fn postgresql_restarted_under_writers_turns_readiness_and_recovers_without_a_registry_restart()
 {
    if std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_default()
        .is_empty()
    {
        println!("skipped: PostgreSQL restart test needs TEST_POSTGRES_URL");
        return;
    }
    // This test must restart its server, so it builds its own; failing to
    // build one is a failure, not a skip.
    let cluster = PgCluster::start()
        .await
        .unwrap_or_else(|e| panic!("cannot build the private PostgreSQL cluster: {e}"));
    let admin_url = cluster.url("postgres");
    Database::connect(&admin_url)
        .await
        .expect("connect to the private cluster")
        .execute_unprepared("CREATE DATABASE registry")
        .await
        .expect("create database");
    let database = TestDatabase::Postgres {
        admin_url,
        name: "registry".to_owned(),
    };
    let crypto =
        start_crypto(Launch::default().env("ENCRYPTION_KEY", STANDARD.encode(STACK_KEY))).await;
    let registry = start_registry(
        &database,
        &crypto.url(),
        Stack::default_registry()
            .arg("--health-interval-seconds")
            .arg("1")
            .env("DATABASE_TIMEOUT_SECONDS", "2"),
    )
    .await;
    let channel = registry.channel().await;
    wait_for_status(channel.clone(), "", ServingStatus::Serving).await;
    let clients = Clients::new(channel.clone());

    let fault = Arc::new(Fault::new());
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let mut c = clients.clone();
        let agent = c
            .create_agent(&format!("agent-{writer}"), None)
            .await
            .expect("create the writer's agent");
        let fault = Arc::clone(&fault);
        writers.push(tokio::spawn(async move {
            database_writer(writer, c, agent.id, &fault).await
        }));
    }

    fault
        .wait("writes flowing", |p| p.ok[BEFORE] >= 2 * WRITERS)
        .await;
    fault.enter(DOWN);
    cluster
        .stop("fast")
        .await
        .unwrap_or_else(|e| panic!("stop PostgreSQL: {e}"));
    wait_for_status(channel.clone(), "", ServingStatus::NotServing).await;
    assert_eq!(
        check(channel.clone(), "").await,
        ServingStatus::NotServing,
        "readiness while PostgreSQL is down"
    );
    fault
        .wait("every writer saw PostgreSQL down", |p| {
            p.unavailable_by_writer.len() == WRITERS
        })
        .await;
    cluster
        .start_again()
        .await
        .unwrap_or_else(|e| panic!("start PostgreSQL again: {e}"));
    fault.enter(BACK);
    wait_for_status(channel.clone(), "", ServingStatus::Serving).await;
    assert_eq!(check(channel.clone(), "").await, ServingStatus::Serving);
    fault
        .wait("every writer succeeded again", |p| {
            p.ok_back_by_writer.len() == WRITERS
        })
        .await;
    fault.stop.store(true, Ordering::SeqCst);
    let mut logs = Vec::new();
    for writer in writers {
        logs.push(writer.await.expect("writer task"));
    }

    let progress = fault.progress.borrow().clone();
    fault.assert_only_unavailable(&format!(
        "{}\nPostgreSQL log:\n{}",
        registry.output(),
        cluster.server_log()
    ));
    assert!(progress.unavailable[DOWN] >= 1, "{progress:?}");
    assert!(progress.ok[BACK] >= 1, "{progress:?}");

    // Every acknowledged write survived. (A call that failed while its
    // commit was in flight may or may not have committed: the client cannot
    // know, so failed writes are not checked here; verify checks that
    // whatever is there is whole.)
    let agents: BTreeSet<String> = database
        .texts("SELECT name FROM agents")
        .await
        .into_iter()
        .collect();
    let providers: BTreeSet<String> = database
        .texts("SELECT name FROM providers WHERE api_key_ciphertext IS NOT NULL")
        .await
        .into_iter()
        .collect();
    for log in &logs {
        for name in &log.created_agents {
            assert!(agents.contains(name), "acknowledged agent {name} is lost");
        }
        for name in &log.created {
            assert!(
                providers.contains(name),
                "acknowledged provider {name} is lost"
            );
        }
        let versions = database
            .count(&format!(
                "SELECT COUNT(*) FROM agent_versions WHERE agent_id = '{}'",
                log.agent_id
            ))
            .await;
        assert!(
            versions > log.agent_updates,
            "agent {}: {versions} versions, {} updates acknowledged (plus its creation)",
            log.agent_id,
            log.agent_updates
        );
    }
    assert_verify_passes(&database).await;

    registry.terminate().await;
    crypto.terminate().await;
    drop(cluster);
}

#[tokio::test]
async fn a_sqlite_file_locked_by_another_process_fails_writes_fast_and_recovers() {
    let Some((stack, path)) = start_on_sqlite("1").await else {
        return;
    };
    let mut c = Clients::new(stack.channel().await);
    let before = c
        .create_agent("before-lock", None)
        .await
        .expect("create before the lock");

    let locker = lock_sqlite_file(&path).await;
    let started = Instant::now();
    let create = tokio::time::timeout(CALL_DEADLINE, c.create_agent("during-lock", None))
        .await
        .expect("CreateAgent under the lock answers instead of hanging");
    let update = tokio::time::timeout(
        CALL_DEADLINE,
        c.agents.update_agent(goal_update(&before.id, "locked")),
    )
    .await
    .expect("UpdateAgent under the lock answers instead of hanging");
    let elapsed = started.elapsed();
    for (call, result) in [
        ("CreateAgent", create.map(|_| ())),
        ("UpdateAgent", update.map(|_| ())),
    ] {
        let status = result.expect_err("a write under another process's lock fails");
        assert_eq!(
            status.code(),
            Code::Unavailable,
            "{call}: {status:?}\n{}",
            stack.registry.output()
        );
        assert!(
            status.message().contains("database"),
            "{call}: the message names the database: {status:?}"
        );
    }
    assert!(
        elapsed < Duration::from_secs(10),
        "two writes under the lock took {elapsed:?} (DATABASE_TIMEOUT_SECONDS=1)"
    );

    unlock_sqlite_file(locker).await;

    // Nothing was written under the lock, and writes work again without a
    // registry restart: the same name can be created now, and the agent
    // gets version 2 (not 3).
    assert_eq!(
        stack
            .database
            .count("SELECT COUNT(*) FROM agents WHERE name = 'during-lock'")
            .await,
        0
    );
    c.create_agent("during-lock", None)
        .await
        .expect("create after the lock is gone");
    let updated = c
        .agents
        .update_agent(goal_update(&before.id, "unlocked"))
        .await
        .expect("update after the lock is gone")
        .into_inner();
    assert_eq!(updated.version, 2, "the failed update wrote no version");
    assert_versions(&stack.database, "agent", &before.id, 2).await;
    assert_eq!(
        stack.database.texts("PRAGMA integrity_check").await,
        vec!["ok".to_owned()]
    );
    assert_eq!(
        stack
            .database
            .count("SELECT COUNT(*) FROM sqlite_master WHERE name = 'fault_locker_probe'")
            .await,
        0,
        "the locker's own write was rolled back"
    );
    assert_verify_passes(&stack.database).await;
    stack.finish().await;
}

/// A write whose caller gives up while it waits for SQLite's write lock
/// (here: the deadline passes while another process holds it) runs to its
/// end on its own once the lock is free, and leaves the registry's
/// connection clean: the next write succeeds as version 3, not with an
/// error from a transaction left open underneath it.
#[tokio::test]
async fn a_write_abandoned_while_waiting_for_the_sqlite_lock_finishes_and_leaves_no_open_transaction()
 {
    let Some((stack, path)) = start_on_sqlite("20").await else {
        return;
    };
    let mut c = Clients::new(stack.channel().await);
    let agent = c.create_agent("abandoned", None).await.expect("create");

    let locker = lock_sqlite_file(&path).await;
    let mut abandoned =
        tonic::Request::new(goal_update(&agent.id, "written after its caller left"));
    // Long enough for the call to reach the batch (it reads the agent
    // first), short against the 20 s the batch may wait for the lock.
    abandoned.set_timeout(Duration::from_secs(1));
    let status = tokio::time::timeout(CALL_DEADLINE, c.agents.update_agent(abandoned))
        .await
        .expect("the abandoned call answers")
        .expect_err("the deadline passes while the lock is held");
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    unlock_sqlite_file(locker).await;

    let next = tokio::time::timeout(
        CALL_DEADLINE,
        c.agents.update_agent(goal_update(&agent.id, "next")),
    )
    .await
    .expect("the next update answers")
    .unwrap_or_else(|status| {
        panic!(
            "the next update after the abandoned one: {status:?}\n{}",
            stack.registry.output()
        )
    })
    .into_inner();
    assert_eq!(
        (next.version, next.goal.as_str()),
        (3, "next"),
        "the abandoned update was written once, as version 2"
    );
    let abandoned_version = c
        .agents
        .get_agent_version(pb::GetAgentVersionRequest {
            agent_id: agent.id.clone(),
            version_number: 2,
        })
        .await
        .expect("version 2")
        .into_inner();
    let goal = abandoned_version.configuration.map(|config| config.goal);
    assert_eq!(goal.as_deref(), Some("written after its caller left"));
    assert_versions(&stack.database, "agent", &agent.id, 3).await;
    assert_verify_passes(&stack.database).await;
    stack.finish().await;
}

/// On SQLite, reads have a connection of their own: they answer while a
/// write waits for the database's write lock (another process holds it),
/// instead of queueing behind that write for the pool's connection.
#[tokio::test]
async fn reads_answer_while_a_write_waits_for_the_sqlite_lock() {
    let Some((stack, path)) = start_on_sqlite("20").await else {
        return;
    };
    let mut c = Clients::new(stack.channel().await);
    let agent = c
        .create_agent("read while locked", None)
        .await
        .expect("create");

    let locker = lock_sqlite_file(&path).await;
    let mut writer = c.agents.clone();
    let update = goal_update(&agent.id, "after the lock");
    let waiting = tokio::spawn(async move { writer.update_agent(update).await });
    // Far below the 20 s the write may wait for the lock: a read that
    // queued behind it would miss this.
    let read_deadline = Duration::from_secs(3);
    for _ in 0..10 {
        let read = c.agents.get_agent(pb::GetAgentRequest {
            id: agent.id.clone(),
            show_deleted: false,
        });
        let current = tokio::time::timeout(read_deadline, read)
            .await
            .expect("a read answers while the write waits")
            .expect("get")
            .into_inner();
        assert_eq!(current.version, 1);
        let list = c.agents.list_agent_versions(pb::ListAgentVersionsRequest {
            agent_id: agent.id.clone(),
            ..Default::default()
        });
        let versions = tokio::time::timeout(read_deadline, list)
            .await
            .expect("a listing answers while the write waits")
            .expect("list versions")
            .into_inner();
        assert_eq!(versions.total_size, 1);
    }
    assert!(
        !waiting.is_finished(),
        "the write should still be waiting for the lock"
    );
    unlock_sqlite_file(locker).await;

    let updated = tokio::time::timeout(CALL_DEADLINE, waiting)
        .await
        .expect("the write finishes once the lock is free")
        .expect("writer task")
        .expect("the update applies");
    assert_eq!(updated.into_inner().version, 2);
    let current = c
        .agents
        .get_agent(pb::GetAgentRequest {
            id: agent.id.clone(),
            show_deleted: false,
        })
        .await
        .expect("get after the write")
        .into_inner();
    assert_eq!(
        (current.version, current.goal.as_str()),
        (2, "after the lock")
    );
    assert_versions(&stack.database, "agent", &agent.id, 2).await;
    stack.finish().await;
}

// ---- the writers ----------------------------------------------------------

/// Phases of a fault; each call is counted in the phase it started in.
const BEFORE: usize = 0;
const DOWN: usize = 1;
const BACK: usize = 2;

/// What every writer shares: the phase, the stop switch, the running tally
/// the test waits on, and every failure.
struct Fault {
    phase: AtomicU8,
    stop: AtomicBool,
    progress: watch::Sender<Progress>,
    failures: Mutex<Vec<String>>,
}

/// Calls that needed the failing dependency, by the phase they started in.
#[derive(Debug, Default, Clone)]
struct Progress {
    ok: [usize; 3],
    unavailable: [usize; 3],
    /// Writers that saw UNAVAILABLE while the dependency was down.
    unavailable_by_writer: BTreeSet<usize>,
    /// Writers that succeeded on a call started after it came back.
    ok_back_by_writer: BTreeSet<usize>,
}

impl Fault {
    fn new() -> Self {
        Self {
            phase: AtomicU8::new(0),
            stop: AtomicBool::new(false),
            progress: watch::Sender::new(Progress::default()),
            failures: Mutex::new(Vec::new()),
        }
    }

    fn enter(&self, phase: usize) {
        self.phase
            .store(u8::try_from(phase).expect("phase"), Ordering::SeqCst);
    }

    fn running(&self) -> bool {
        !self.stop.load(Ordering::SeqCst)
    }

    /// Makes a call with a deadline (a hang becomes a failure the test
    /// reports) and records its outcome. `needs_dependency`: whether the
    /// call needs the dependency the test breaks.
    async fn call<T>(
        &self,
        writer: usize,
        what: &str,
        needs_dependency: bool,
        call: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Option<T> {
        let phase = usize::from(self.phase.load(Ordering::SeqCst));
        let result = tokio::time::timeout(CALL_DEADLINE, call)
            .await
            .unwrap_or_else(|_| {
                Err(Status::deadline_exceeded(format!(
                    "test: no answer within {CALL_DEADLINE:?}"
                )))
            });
        let unavailable = matches!(&result, Err(s) if s.code() == Code::Unavailable);
        if let Err(status) = &result {
            self.failures.lock().expect("failures").push(format!(
                "writer {writer} phase {phase} {what}: {:?} {:?}",
                status.code(),
                status.message()
            ));
        }
        if needs_dependency {
            self.progress.send_modify(|p| {
                if result.is_ok() {
                    p.ok[phase] += 1;
                    if phase == BACK {
                        p.ok_back_by_writer.insert(writer);
                    }
                } else if unavailable {
                    p.unavailable[phase] += 1;
                    if phase == DOWN {
                        p.unavailable_by_writer.insert(writer);
                    }
                }
            });
        }
        result.ok().map(tonic::Response::into_inner)
    }

    /// Waits until the tally satisfies `reached`, or fails the test.
    async fn wait(&self, what: &str, reached: impl Fn(&Progress) -> bool) {
        let mut progress = self.progress.subscribe();
        let reached = matches!(
            tokio::time::timeout(DEADLINE, progress.wait_for(|p| reached(p))).await,
            Ok(Ok(_))
        );
        assert!(
            reached,
            "{what}: not reached within {DEADLINE:?}: {:?}\nfailures: {:?}",
            *progress.borrow(),
            self.failures.lock().expect("failures")
        );
    }

    /// Every failed call answered UNAVAILABLE (never INTERNAL, UNKNOWN, or
    /// a hang).
    fn assert_only_unavailable(&self, logs: &str) {
        let failures = self.failures.lock().expect("failures");
        let kinds: BTreeSet<String> = failures
            .iter()
            .map(|f| {
                f.split_once(": ")
                    .map_or(f.as_str(), |(_, kind)| kind)
                    .to_owned()
            })
            .collect();
        println!(
            "{} failed calls, {kinds:?}; tally {:?}",
            failures.len(),
            *self.progress.borrow()
        );
        let wrong: Vec<&String> = failures
            .iter()
            .filter(|f| !f.contains("Unavailable"))
            .collect();
        assert!(
            wrong.is_empty(),
            "calls failed with something other than UNAVAILABLE: {wrong:#?}\nlogs:\n{logs}"
        );
    }
}

/// What a crypto-fault writer got acknowledged.
#[derive(Debug)]
struct WriterLog {
    writer: usize,
    /// Providers (by name) whose CreateProvider answered OK.
    created: Vec<String>,
    /// Providers whose CreateProvider failed.
    not_created: Vec<String>,
    /// Whether every acknowledged create answered `api_key_set`.
    keys_reported_set: bool,
    /// Agents whose CreateAgent answered OK.
    created_agents: Vec<String>,
    provider_id: String,
    /// Acknowledged UpdateProvider calls on `provider_id`.
    provider_updates: i64,
    /// The key of the newest acknowledged UpdateProvider (or the first).
    last_key: String,
    agent_id: String,
    /// Acknowledged UpdateAgent calls on `agent_id`.
    agent_updates: i64,
}

impl WriterLog {
    fn new(writer: usize, provider_id: String, agent_id: String) -> Self {
        Self {
            writer,
            created: Vec::new(),
            not_created: Vec::new(),
            keys_reported_set: true,
            created_agents: Vec::new(),
            provider_id,
            provider_updates: 0,
            last_key: key(writer, 0),
            agent_id,
            agent_updates: 0,
        }
    }
}

/// Loops CreateProvider (with a key), UpdateProvider (a new key) and
/// UpdateAgent until stopped; the first two need crypto-service.
async fn crypto_writer(
    writer: usize,
    mut c: Clients,
    provider_id: String,
    agent_id: String,
    fault: &Fault,
) -> WriterLog {
    let mut log = WriterLog::new(writer, provider_id, agent_id);
    let mut round = 0;
    while fault.running() {
        round += 1;
        let name = format!("p{writer}-{round}");
        let create = c
            .providers
            .create_provider(provider_request(&name, &key(writer + 1000, round)));
        match fault.call(writer, "CreateProvider", true, create).await {
            Some(created) => {
                log.keys_reported_set &= created.api_key_set;
                log.created.push(name);
            }
            None => log.not_created.push(name),
        }

        let new_key = key(writer, round);
        let update = c.providers.update_provider(pb::UpdateProviderRequest {
            provider: Some(pb::Provider {
                id: log.provider_id.clone(),
                api_key: new_key.clone(),
                ..Default::default()
            }),
            update_mask: mask(&["api_key"]),
            change_description: String::new(),
            revoke_replaced_key: false,
            ..Default::default()
        });
        if fault
            .call(writer, "UpdateProvider", true, update)
            .await
            .is_some()
        {
            log.provider_updates += 1;
            log.last_key = new_key;
        }

        let update = c
            .agents
            .update_agent(goal_update(&log.agent_id, &format!("goal {round}")));
        if fault
            .call(writer, "UpdateAgent", false, update)
            .await
            .is_some()
        {
            log.agent_updates += 1;
        }
    }
    log
}

/// Loops UpdateAgent, CreateAgent and CreateProvider until stopped; all
/// need the database.
async fn database_writer(
    writer: usize,
    mut c: Clients,
    agent_id: String,
    fault: &Fault,
) -> WriterLog {
    let mut log = WriterLog::new(writer, String::new(), agent_id);
    let mut round = 0;
    while fault.running() {
        round += 1;
        let update = c
            .agents
            .update_agent(goal_update(&log.agent_id, &format!("goal {round}")));
        if fault
            .call(writer, "UpdateAgent", true, update)
            .await
            .is_some()
        {
            log.agent_updates += 1;
        }

        let name = format!("a{writer}-{round}");
        let create = c.agents.create_agent(pb::CreateAgentRequest {
            agent: Some(agent(&name, None)),
            change_description: String::new(),
            ..Default::default()
        });
        if fault
            .call(writer, "CreateAgent", true, create)
            .await
            .is_some()
        {
            log.created_agents.push(name);
        }

        let name = format!("p{writer}-{round}");
        let create = c
            .providers
            .create_provider(provider_request(&name, &key(writer, round)));
        if fault
            .call(writer, "CreateProvider", true, create)
            .await
            .is_some()
        {
            log.created.push(name);
        }
    }
    log
}

// ---- helpers --------------------------------------------------------------

#[derive(Clone)]
struct Clients {
    agents: AgentServiceClient<Authed>,
    providers: ProviderServiceClient<Authed>,
    runtime: RuntimeServiceClient<Authed>,
}

impl Clients {
    /// Clients acting as an admin with the runtime role in tenant `acme`.
    fn new(channel: Channel) -> Self {
        let token = auth::token("faults", "acme", &["admin", "runtime"]);
        let channel = auth::authed(channel, auth::Bearer::new(&token));
        Self {
            agents: AgentServiceClient::new(channel.clone()),
            providers: ProviderServiceClient::new(channel.clone()),
            runtime: RuntimeServiceClient::new(channel),
        }
    }

    async fn create_provider(&mut self, name: &str, api_key: &str) -> Result<pb::Provider, Status> {
        self.providers
            .create_provider(provider_request(name, api_key))
            .await
            .map(tonic::Response::into_inner)
    }

    async fn create_agent(
        &mut self,
        name: &str,
        provider_id: Option<&str>,
    ) -> Result<pb::Agent, Status> {
        self.agents
            .create_agent(pb::CreateAgentRequest {
                agent: Some(agent(name, provider_id)),
                change_description: String::new(),
                ..Default::default()
            })
            .await
            .map(tonic::Response::into_inner)
    }
}

fn agent(name: &str, provider_id: Option<&str>) -> pb::Agent {
    pb::Agent {
        name: name.to_owned(),
        role: "r".to_owned(),
        goal: "g".to_owned(),
        llm_provider_id: provider_id.map(str::to_owned),
        ..Default::default()
    }
}

fn provider_request(name: &str, api_key: &str) -> pb::CreateProviderRequest {
    pb::CreateProviderRequest {
        provider: Some(pb::Provider {
            name: name.to_owned(),
            provider_type: pb::ProviderType::Openai.into(),
            model_name: "gpt-4".to_owned(),
            api_key: api_key.to_owned(),
            ..Default::default()
        }),
        change_description: String::new(),
        ..Default::default()
    }
}

fn goal_update(id: &str, goal: &str) -> pb::UpdateAgentRequest {
    pb::UpdateAgentRequest {
        agent: Some(pb::Agent {
            id: id.to_owned(),
            goal: goal.to_owned(),
            ..Default::default()
        }),
        update_mask: mask(&["goal"]),
        change_description: String::new(),
        ..Default::default()
    }
}

fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask {
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
    })
}

fn key(writer: usize, round: u32) -> String {
    format!("sk-fault-{writer}-{round}")
}

/// crypto-service on a unix socket, so a new one can take the same address
/// right after a SIGKILL.
/// The resource's version rows are exactly 1..`expected` and its current
/// version is `expected`.
async fn assert_versions(database: &TestDatabase, kind: &str, id: &str, expected: i64) {
    let rows = database
        .count(&format!(
            "SELECT COUNT(DISTINCT version_number) FROM {kind}_versions WHERE {kind}_id = '{id}'"
        ))
        .await;
    let newest = database
        .count(&format!(
            "SELECT COALESCE(MAX(version_number), 0) FROM {kind}_versions WHERE {kind}_id = '{id}'"
        ))
        .await;
    let oldest = database
        .count(&format!(
            "SELECT COALESCE(MIN(version_number), 0) FROM {kind}_versions WHERE {kind}_id = '{id}'"
        ))
        .await;
    let current = database
        .count(&format!("SELECT version FROM {kind}s WHERE id = '{id}'"))
        .await;
    assert_eq!(
        (rows, oldest, newest, current),
        (expected, 1, expected, expected),
        "{kind} {id}: (version rows, oldest, newest, current) vs acknowledged changes"
    );
}

async fn assert_verify_passes(database: &TestDatabase) {
    let launch = Launch::default()
        .env("DATABASE_URL", database.url())
        .arg("verify");
    let (status, output) = Process::run_to_exit(&binary("registry-service"), launch).await;
    assert!(status.success(), "verify after the fault:\n{output}");
    assert!(output.contains(", 0 problems"), "{output}");
}

/// A serving stack on SQLite whose writes wait up to `lock_timeout_seconds`
/// for a lock, and its database file; `None` on PostgreSQL (the file-lock
/// tests are for SQLite only).
async fn start_on_sqlite(lock_timeout_seconds: &str) -> Option<(Stack, PathBuf)> {
    let stack = Stack::start_with(
        Stack::default_registry().env("DATABASE_TIMEOUT_SECONDS", lock_timeout_seconds),
    )
    .await;
    let TestDatabase::Sqlite { path, .. } = &stack.database else {
        println!("skipped: the file-lock test is for SQLite only");
        stack.finish().await;
        return None;
    };
    let path = path.clone();
    wait_for_status(stack.channel().await, "", ServingStatus::Serving).await;
    Some((stack, path))
}

/// Lets the locker of [`lock_sqlite_file`] roll back and exit.
async fn unlock_sqlite_file(mut locker: tokio::process::Child) {
    drop(locker.stdin.take());
    let exit = tokio::time::timeout(DEADLINE, locker.wait())
        .await
        .expect("the locker exits when its stdin closes")
        .expect("locker status");
    assert!(exit.success(), "locker: {exit:?}");
}

/// Starts a python3 process that holds SQLite's write lock on `path` (an
/// EXCLUSIVE transaction with a write in it) until its stdin closes, then
/// rolls back; returns once it says "locked".
///
/// `PRAGMA locking_mode=EXCLUSIVE` is not used: in WAL mode it cannot be
/// taken while the registry's pool keeps the database open (the locker
/// itself would get "database is locked"); the write lock is what every
/// writer needs, so holding it is the fault writers meet.
async fn lock_sqlite_file(path: &Path) -> tokio::process::Child {
    const LOCKER: &str = r#"
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)
db.execute("BEGIN EXCLUSIVE")
db.execute("CREATE TABLE fault_locker_probe (x)")
print("locked", flush=True)
sys.stdin.read()
db.execute("ROLLBACK")
db.close()
"#;
    let mut child = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(LOCKER)
        .arg(path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 starts");
    let stdout = child.stdout.take().expect("locker stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(DEADLINE, lines.next_line())
        .await
        .expect("the locker takes the lock within the deadline")
        .expect("read the locker's output");
    assert_eq!(line.as_deref(), Some("locked"), "the locker did not lock");
    child
}
