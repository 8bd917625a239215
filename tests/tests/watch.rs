//! WatchChanges from outside: every committed change of the caller's
//! tenant, once and in commit order, with contiguous revisions; a resume
//! after a dropped stream misses and repeats nothing; a slow reader is cut
//! (RESOURCE_EXHAUSTED) and resumes; compacted revisions answer
//! OUT_OF_RANGE naming the oldest kept; SIGTERM ends streams at once; on
//! PostgreSQL a write through one replica reaches a watcher on another;
//! many streams of one connection each get every change; one tenant cannot
//! hold every stream of a server.

use std::time::{Duration, Instant};

use proto::v1 as pb;
use proto::v1::agent_service_client::AgentServiceClient;
use proto::v1::provider_service_client::ProviderServiceClient;
use proto::v1::watch_service_client::WatchServiceClient;
use tests::auth::{Authed, Bearer, authed, token};
use tests::stack::{Stack, start_registry};
use tests::{Process, http_get};
use tonic::{Code, Streaming};

/// How long a test waits for an event before it fails (a bound, not a
/// synchronisation: events arrive in milliseconds).
const EVENT_DEADLINE: Duration = Duration::from_secs(10);

type Changes = Streaming<pb::Change>;

async fn watch(channel: Authed, after: Option<i64>, kinds: &[pb::ResourceKind]) -> Changes {
    open(channel, after, kinds).await.expect("watch")
}

/// A stream, or the status that refused it.
async fn open(
    channel: Authed,
    after: Option<i64>,
    kinds: &[pb::ResourceKind],
) -> Result<Changes, tonic::Status> {
    WatchServiceClient::new(channel)
        .watch_changes(pb::WatchChangesRequest {
            after_revision: after,
            kinds: kinds.iter().map(|kind| i32::from(*kind)).collect(),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn next(changes: &mut Changes) -> Result<pb::Change, tonic::Status> {
    tokio::time::timeout(EVENT_DEADLINE, changes.message())
        .await
        .expect("an event within the deadline")
        .map(|change| change.expect("the stream does not end by itself"))
}

async fn next_change(changes: &mut Changes) -> pb::Change {
    next(changes).await.expect("a change")
}

/// The SYNCED marker's revision (asserting that is what came).
async fn synced(changes: &mut Changes) -> i64 {
    let marker = next_change(changes).await;
    assert_eq!(marker.action(), pb::ChangeAction::Synced, "{marker:?}");
    marker.revision
}

/// A change as the test expects it: (revision, kind, action, version).
type Seen = (i64, pb::ResourceKind, pb::ChangeAction, i64);

fn seen(change: &pb::Change) -> Seen {
    (
        change.revision,
        change.kind(),
        change.action(),
        change.version_number,
    )
}

fn agent(name: &str) -> pb::Agent {
    pb::Agent {
        name: name.to_owned(),
        role: "Analyst".to_owned(),
        goal: "Analyze".to_owned(),
        ..Default::default()
    }
}

async fn create_agent(channel: &Authed, name: &str) -> pb::Agent {
    AgentServiceClient::new(channel.clone())
        .create_agent(pb::CreateAgentRequest {
            agent: Some(agent(name)),
            change_description: String::new(),
            ..Default::default()
        })
        .await
        .expect("create agent")
        .into_inner()
}

async fn set_goal(channel: &Authed, id: &str, goal: &str) -> pb::Agent {
    AgentServiceClient::new(channel.clone())
        .update_agent(pb::UpdateAgentRequest {
            agent: Some(pb::Agent {
                id: id.to_owned(),
                goal: goal.to_owned(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["goal".to_owned()],
            }),
            change_description: String::new(),
            ..Default::default()
        })
        .await
        .expect("update agent")
        .into_inner()
}

async fn create_provider(channel: &Authed, name: &str) -> pb::Provider {
    ProviderServiceClient::new(channel.clone())
        .create_provider(pb::CreateProviderRequest {
            provider: Some(pb::Provider {
                name: name.to_owned(),
                provider_type: pb::ProviderType::Openai.into(),
                model_name: "gpt-4o".to_owned(),
                api_key: "sk-watch-test".to_owned(),
                ..Default::default()
            }),
            change_description: String::new(),
            ..Default::default()
        })
        .await
        .expect("create provider")
        .into_inner()
}

#[tokio::test]
async fn every_change_arrives_once_in_order_and_a_resume_misses_nothing() {
    let registry = Stack::default_registry()
        .arg("--metrics-listen")
        .arg("127.0.0.1:0");
    let stack = Stack::start_with(registry).await;
    let admin = stack.channel_as("alice", "acme", &["admin"]).await;
    let runtime = stack.channel_as("robot", "acme", &["runtime"]).await;

    // From now: nothing to replay in a new tenant.
    let mut live = watch(runtime.clone(), None, &[]).await;
    assert_eq!(synced(&mut live).await, 0);

    let provider = create_provider(&admin, "openai").await;
    let analyst = create_agent(&admin, "analyst").await;
    set_goal(&admin, &analyst.id, "Analyze more").await;
    AgentServiceClient::new(admin.clone())
        .rollback_agent(pb::RollbackAgentRequest {
            agent_id: analyst.id.clone(),
            version_number: 1,
            etag: String::new(),
            change_description: String::new(),
            ..Default::default()
        })
        .await
        .expect("rollback");
    AgentServiceClient::new(admin.clone())
        .delete_agent(pb::DeleteAgentRequest {
            id: analyst.id.clone(),
            etag: String::new(),
            ..Default::default()
        })
        .await
        .expect("delete");

    use pb::ChangeAction as A;
    use pb::ResourceKind as K;
    let expected: Vec<Seen> = vec![
        (1, K::Provider, A::Create, 1),
        (2, K::Agent, A::Create, 1),
        (3, K::Agent, A::Update, 2),
        (4, K::Agent, A::Rollback, 3),
        // Soft delete: the DELETE version, after the three before it.
        (5, K::Agent, A::Delete, 4),
    ];
    let mut received = Vec::new();
    for _ in &expected {
        received.push(next_change(&mut live).await);
    }
    assert_eq!(received.iter().map(seen).collect::<Vec<_>>(), expected);
    assert_eq!(received[0].resource_id, provider.id);
    assert!(received[1..].iter().all(|c| c.resource_id == analyst.id));
    assert!(received.iter().all(|c| c.changed_by == "alice"));
    assert!(received.iter().all(|c| c.commit_time.is_some()));

    // The stream is counted as a server stream in the metrics.
    let metrics = stack
        .registry
        .log_field("metrics serving", "listen")
        .expect("metrics address");
    let exposition = http_get(&metrics, "/metrics").await;
    let started = r#"grpc_server_started_total{grpc_type="server_stream",grpc_service="agentregistry.v1.WatchService",grpc_method="WatchChanges"}"#;
    assert_eq!(tests::metric_value(&exposition, started), 1);

    // A forced disconnect after revision 3; three more changes meanwhile.
    let mut dropped = watch(runtime.clone(), Some(0), &[]).await;
    let mut last = 0;
    for _ in 0..3 {
        last = next_change(&mut dropped).await.revision;
    }
    drop(dropped);
    let writer = create_agent(&admin, "writer").await;
    set_goal(&admin, &writer.id, "Write").await;
    set_goal(&admin, &writer.id, "Write more").await;
    let mut resumed = watch(runtime.clone(), Some(last), &[]).await;
    let mut revisions = Vec::new();
    for _ in 0..5 {
        revisions.push(next_change(&mut resumed).await.revision);
    }
    assert_eq!(revisions, vec![4, 5, 6, 7, 8], "after {last}: each once");
    assert_eq!(synced(&mut resumed).await, 8);

    // The stream opened first saw the same three, with the same numbers.
    let mut live_revisions = Vec::new();
    for _ in 0..3 {
        live_revisions.push(next_change(&mut live).await.revision);
    }
    assert_eq!(live_revisions, vec![6, 7, 8]);
    stack.finish().await;
}

#[tokio::test]
async fn many_streams_of_one_connection_each_get_every_change_while_its_calls_answer() {
    // A connection's streams share its writes (`ops::connection` holds them
    // and a small flush waits a turn for the other streams' frames): none
    // may lose or reorder a change, and the writes, unary calls on the same
    // connection, are answered meanwhile.
    const STREAMS: usize = 100;
    let stack = Stack::start().await;
    let admin = stack.channel_as("alice", "acme", &["admin"]).await;
    let mut streams = Vec::with_capacity(STREAMS);
    for _ in 0..STREAMS {
        let mut changes = watch(admin.clone(), None, &[]).await;
        assert_eq!(synced(&mut changes).await, 0);
        streams.push(changes);
    }

    use pb::ChangeAction as A;
    use pb::ResourceKind as K;
    let expected: Vec<Seen> = vec![
        (1, K::Agent, A::Create, 1),
        (2, K::Agent, A::Update, 2),
        (3, K::Agent, A::Update, 3),
        (4, K::Agent, A::Update, 4),
    ];
    // A connection whose writes stall would hang the calls below: bounded,
    // so that it fails instead.
    let writes_and_deliveries = async {
        let analyst = create_agent(&admin, "analyst").await;
        for goal in ["Analyze more", "Analyze again", "Analyze less"] {
            set_goal(&admin, &analyst.id, goal).await;
        }
        for (index, changes) in streams.iter_mut().enumerate() {
            let mut received = Vec::with_capacity(expected.len());
            for _ in &expected {
                received.push(seen(&next_change(changes).await));
            }
            assert_eq!(received, expected, "stream {index}");
        }
    };
    tokio::time::timeout(Duration::from_secs(60), writes_and_deliveries)
        .await
        .expect("the writes answered and every stream got every change within 60 s");
    stack.finish().await;
}

#[tokio::test]
async fn kinds_filter_and_tenants_never_see_each_other() {
    let stack = Stack::start().await;
    let acme = stack.channel_as("alice", "acme", &["admin"]).await;
    let globex = stack
        .channel_as("gina", "globex", &["viewer", "admin"])
        .await;
    let mut providers_only = watch(acme.clone(), Some(0), &[pb::ResourceKind::Provider]).await;
    let mut globex_all = watch(globex.clone(), None, &[]).await;
    assert_eq!(synced(&mut providers_only).await, 0);
    assert_eq!(synced(&mut globex_all).await, 0);

    create_agent(&acme, "analyst").await;
    let provider = create_provider(&acme, "openai").await;
    let theirs = create_agent(&globex, "analyst").await;

    let only = next_change(&mut providers_only).await;
    assert_eq!(
        (only.revision, only.kind(), only.resource_id.as_str()),
        (2, pb::ResourceKind::Provider, provider.id.as_str()),
        "the agent (revision 1) is skipped, its number too"
    );
    let own = next_change(&mut globex_all).await;
    assert_eq!(
        (own.revision, own.resource_id.as_str()),
        (1, theirs.id.as_str()),
        "globex's first change is its revision 1, and acme's never show"
    );
    stack.finish().await;
}

#[tokio::test]
async fn bad_requests_and_callers_are_refused() {
    let stack = Stack::start().await;
    let viewer = stack.channel_as("val", "acme", &["viewer"]).await;
    let status = WatchServiceClient::new(viewer.clone())
        .watch_changes(pb::WatchChangesRequest {
            after_revision: Some(-1),
            kinds: vec![0, 99, 1, 1],
        })
        .await
        .expect_err("invalid");
    assert_eq!(status.code(), Code::InvalidArgument);
    let details = tonic_types::StatusExt::get_error_details(&status);
    let mut fields: Vec<String> = details
        .bad_request()
        .expect("field violations")
        .field_violations
        .iter()
        .map(|v| v.field.clone())
        .collect();
    fields.sort();
    assert_eq!(
        fields,
        ["after_revision", "kinds[0]", "kinds[1]", "kinds[3]"]
    );

    let ahead = WatchServiceClient::new(viewer.clone())
        .watch_changes(pb::WatchChangesRequest {
            after_revision: Some(7),
            kinds: vec![],
        })
        .await
        .expect_err("ahead");
    assert_eq!(ahead.code(), Code::OutOfRange, "{ahead:?}");
    assert!(ahead.message().contains("current revision 0"), "{ahead:?}");

    let anonymous = authed(stack.channel().await, Bearer::none());
    let status = WatchServiceClient::new(anonymous)
        .watch_changes(pb::WatchChangesRequest::default())
        .await
        .expect_err("no token");
    assert_eq!(status.code(), Code::Unauthenticated);
    // An operator token holds no tenant role: nothing to watch.
    let operator = stack
        .channel_as(tests::auth::STACK_OPERATOR, "acme", &["platform-operator"])
        .await;
    let status = WatchServiceClient::new(operator)
        .watch_changes(pb::WatchChangesRequest::default())
        .await
        .expect_err("operator");
    assert_eq!(status.code(), Code::PermissionDenied);
    stack.finish().await;
}

#[tokio::test]
async fn a_slow_watcher_is_cut_and_resumes_from_its_last_revision() {
    let stack =
        Stack::start_with(Stack::default_registry().env("REGISTRY_WATCH_BUFFER", "4")).await;
    let admin = stack.channel_as("alice", "acme", &["admin"]).await;
    let analyst = create_agent(&admin, "analyst").await;

    // A reader whose HTTP/2 window holds a few changes, that stops reading.
    let endpoint = tonic::transport::Endpoint::from_shared(stack.registry.url())
        .expect("endpoint")
        .initial_stream_window_size(Some(1024))
        .initial_connection_window_size(Some(1024));
    let small = authed(
        endpoint.connect().await.expect("connect"),
        Bearer::new(&token("robot", "acme", &["runtime"])),
    );
    let mut slow = watch(small, Some(0), &[]).await;
    const UPDATES: i64 = 200;
    for i in 0..UPDATES {
        set_goal(&admin, &analyst.id, &format!("goal {i}")).await;
    }
    let total = UPDATES + 1;

    let mut received = Vec::new();
    let cut = loop {
        match next(&mut slow).await {
            Ok(change) if change.action() == pb::ChangeAction::Synced => continue,
            Ok(change) => received.push(change.revision),
            Err(status) => break status,
        }
    };
    assert_eq!(cut.code(), Code::ResourceExhausted, "{cut:?}");
    assert!(
        (received.len() as i64) < total,
        "cut before the end: {received:?}"
    );
    let last = *received.last().expect("some changes before the cut");
    assert!(
        cut.message().contains("resume with after_revision"),
        "{cut:?}"
    );

    let reader = stack.channel_as("robot", "acme", &["runtime"]).await;
    let mut resumed = watch(reader, Some(last), &[]).await;
    for _ in last..total {
        received.push(next_change(&mut resumed).await.revision);
    }
    assert_eq!(synced(&mut resumed).await, total);
    let expected: Vec<i64> = (1..=total).collect();
    assert_eq!(received, expected, "every change exactly once, in order");
    stack.finish().await;
}

#[tokio::test]
async fn compacted_revisions_answer_out_of_range_naming_the_oldest_kept() {
    let registry = Stack::default_registry()
        .env("REGISTRY_WATCH_HISTORY", "2")
        .env("REGISTRY_WATCH_COMPACTION_SECONDS", "1");
    let stack = Stack::start_with(registry).await;
    let admin = stack.channel_as("alice", "acme", &["admin"]).await;
    let analyst = create_agent(&admin, "analyst").await;
    for goal in ["a", "b", "c", "d"] {
        set_goal(&admin, &analyst.id, goal).await;
    }
    // Revisions 1..=5; the compaction keeps 4 and 5. It runs every second:
    // poll until it has (bounded by the deadline).
    let deadline = Instant::now() + EVENT_DEADLINE;
    let status = loop {
        let answer = WatchServiceClient::new(admin.clone())
            .watch_changes(pb::WatchChangesRequest {
                after_revision: Some(0),
                kinds: vec![],
            })
            .await;
        // A compaction that ran between the writes kept older revisions:
        // wait for one that ran after the last write.
        match answer {
            Err(status) if status.code() != Code::OutOfRange => panic!("{status:?}"),
            Err(status) if status.message().contains("oldest available is revision 4") => {
                break status;
            }
            _ if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            answer => panic!("not compacted after the last write within the deadline: {answer:?}"),
        }
    };
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(
        status.message().contains("oldest available is revision 4"),
        "{status:?}"
    );
    let mut kept = watch(admin.clone(), Some(3), &[]).await;
    assert_eq!(next_change(&mut kept).await.revision, 4);
    assert_eq!(next_change(&mut kept).await.revision, 5);
    assert_eq!(synced(&mut kept).await, 5);
    stack.finish().await;
}

#[tokio::test]
async fn one_tenant_cannot_take_every_stream_of_the_server() {
    let registry = Stack::default_registry()
        .env("REGISTRY_WATCH_MAX_STREAMS", "3")
        .env("REGISTRY_WATCH_MAX_STREAMS_PER_TENANT", "2");
    let stack = Stack::start_with(registry).await;
    let acme = stack.channel_as("robot", "acme", &["runtime"]).await;
    let globex = stack.channel_as("rita", "globex", &["runtime"]).await;

    let mut first = watch(acme.clone(), None, &[]).await;
    let mut second = watch(acme.clone(), None, &[]).await;
    assert_eq!(synced(&mut first).await, 0);
    assert_eq!(synced(&mut second).await, 0);
    let refused = open(acme.clone(), None, &[])
        .await
        .expect_err("a third stream of acme");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("this tenant has 2 watch streams open"),
        "{refused:?}"
    );

    // Another tenant still gets the server's last stream, and then the
    // server's own bound holds.
    let mut theirs = watch(globex.clone(), None, &[]).await;
    assert_eq!(synced(&mut theirs).await, 0);
    let refused = open(globex.clone(), None, &[])
        .await
        .expect_err("a fourth stream of the server");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("this server has 3 watch streams open"),
        "{refused:?}"
    );

    // A stream acme closes gives its share back (once the server has seen
    // the stream cancelled: asked again until then, within the deadline).
    drop(first);
    let deadline = Instant::now() + EVENT_DEADLINE;
    let mut again = loop {
        match open(acme.clone(), None, &[]).await {
            Ok(stream) => break stream,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(
                    Instant::now() < deadline,
                    "the closed stream was never released"
                );
            }
        }
    };
    assert_eq!(synced(&mut again).await, 0);
    stack.finish().await;
}

#[tokio::test]
async fn sigterm_ends_open_streams_without_waiting_for_the_drain() {
    let registry = Stack::default_registry().env("REGISTRY_DRAIN_SECONDS", "60");
    let stack = Stack::start_with(registry).await;
    let runtime = stack.channel_as("robot", "acme", &["runtime"]).await;
    let mut open = watch(runtime, None, &[]).await;
    assert_eq!(synced(&mut open).await, 0);

    let started = Instant::now();
    stack.registry.signal("TERM");
    let ended = next(&mut open).await.expect_err("the stream ends");
    assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");
    assert!(ended.message().contains("after_revision = 0"), "{ended:?}");
    let Stack {
        registry, database, ..
    } = stack;
    let (status, _) = registry.wait().await;
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "exited in {:?}, not at the 60 s drain deadline",
        started.elapsed()
    );
    database.drop_database().await;
}

#[tokio::test]
async fn on_postgres_a_write_through_one_replica_reaches_a_watcher_on_another() {
    let stack = Stack::start().await;
    if !stack.database.is_postgres() {
        // One SQLite file has one writer process: replicas need PostgreSQL.
        stack.finish().await;
        return;
    }
    let replica_b: Process = start_registry(
        &stack.database,
        &stack.crypto_endpoint,
        Stack::default_registry(),
    )
    .await;
    let on_a = stack.channel_as("robot", "acme", &["runtime"]).await;
    let through_b = authed(
        replica_b.channel().await,
        Bearer::new(&token("alice", "acme", &["admin"])),
    );
    let mut watcher = watch(on_a, None, &[]).await;
    assert_eq!(synced(&mut watcher).await, 0);
    let analyst = create_agent(&through_b, "analyst").await;
    set_goal(&through_b, &analyst.id, "Analyze more").await;
    let first = next_change(&mut watcher).await;
    let second = next_change(&mut watcher).await;
    assert_eq!(
        (first.revision, first.resource_id.as_str(), first.action()),
        (1, analyst.id.as_str(), pb::ChangeAction::Create)
    );
    assert_eq!(
        (second.revision, second.action()),
        (2, pb::ChangeAction::Update)
    );
    replica_b.terminate().await;
    stack.finish().await;
}

#[tokio::test]
async fn label_moves_are_changes_with_their_label_and_target() {
    let stack = Stack::start().await;
    let admin = stack.channel_as("alice", "acme", &["admin"]).await;
    let analyst = create_agent(&admin, "analyst").await;
    set_goal(&admin, &analyst.id, "Analyze more").await;
    let mut changes = watch(admin.clone(), Some(2), &[]).await;
    assert_eq!(synced(&mut changes).await, 2);

    let mut agents = AgentServiceClient::new(admin.clone());
    let set = |version_number, expected_version| pb::SetAgentLabelRequest {
        agent_id: analyst.id.clone(),
        label: "production".to_owned(),
        version_number,
        expected_version,
        reason: "ship it".to_owned(),
        ..Default::default()
    };
    agents.set_agent_label(set(1, Some(0))).await.expect("set");
    agents.set_agent_label(set(2, Some(1))).await.expect("move");
    // Where it already points: no change, nothing recorded.
    agents.set_agent_label(set(2, None)).await.expect("again");
    agents
        .delete_agent_label(pb::DeleteAgentLabelRequest {
            agent_id: analyst.id.clone(),
            label: "production".to_owned(),
            expected_version: Some(2),
            reason: String::new(),
            ..Default::default()
        })
        .await
        .expect("delete");
    set_goal(&admin, &analyst.id, "Analyze most").await;

    use pb::ChangeAction as A;
    let mut received = Vec::new();
    for _ in 0..4 {
        let change = next_change(&mut changes).await;
        received.push((
            change.revision,
            change.action(),
            change.label.clone(),
            change.version_number,
        ));
    }
    let production = || "production".to_owned();
    assert_eq!(
        received,
        vec![
            (3, A::LabelSet, production(), 1),
            (4, A::LabelSet, production(), 2),
            (5, A::LabelDelete, production(), 0),
            (6, A::Update, String::new(), 3),
        ]
    );
    stack.finish().await;
}
