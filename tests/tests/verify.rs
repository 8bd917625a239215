//! `registry-service verify` finds a consistent database consistent and a
//! deliberately corrupted one broken, naming each problem.

use proto::v1 as pb;
use sea_orm::ConnectionTrait;
use tests::stack::Stack;
use tests::{Launch, Process, binary};

async fn agent_with_versions(stack: &Stack, name: &str) -> String {
    let channel = stack.channel_as("ops", "acme", &["editor"]).await;
    let mut agents = pb::agent_service_client::AgentServiceClient::new(channel);
    let agent = agents
        .create_agent(pb::CreateAgentRequest {
            agent: Some(pb::Agent {
                name: name.into(),
                role: "r".into(),
                goal: "g0".into(),
                ..Default::default()
            }),
            change_description: String::new(),
            ..Default::default()
        })
        .await
        .expect("create")
        .into_inner();
    for round in 1..=3 {
        agents
            .update_agent(pb::UpdateAgentRequest {
                agent: Some(pb::Agent {
                    id: agent.id.clone(),
                    goal: format!("g{round}"),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["goal".into()],
                }),
                change_description: String::new(),
                ..Default::default()
            })
            .await
            .expect("update");
    }
    agent.id
}

async fn run_verify(stack: &Stack) -> (bool, String) {
    let launch = Launch::default()
        .env("DATABASE_URL", stack.database.url())
        .arg("verify");
    let (status, output) = Process::run_to_exit(&binary("registry-service"), launch).await;
    (status.success(), output)
}

#[tokio::test]
async fn verify_passes_a_consistent_database_and_reports_each_corruption() {
    let stack = Stack::start().await;
    let gap = agent_with_versions(&stack, "gap").await;
    let drift = agent_with_versions(&stack, "drift").await;
    let _fine = agent_with_versions(&stack, "fine").await;

    let (ok, output) = run_verify(&stack).await;
    assert!(ok, "{output}");
    assert!(
        output.contains("verify: 3 resources checked, 0 problems"),
        "{output}"
    );

    // A lost version row, and a current row that no longer matches its
    // newest snapshot.
    let db = sea_orm::Database::connect(stack.database.url())
        .await
        .expect("connect");
    db.execute_unprepared(&format!(
        "DELETE FROM agent_versions WHERE agent_id = '{gap}' AND version_number = 2"
    ))
    .await
    .expect("corrupt: delete a version");
    db.execute_unprepared(&format!(
        "UPDATE agent_versions SET configuration = (SELECT configuration FROM agent_versions WHERE agent_id = '{drift}' AND version_number = 1) \
         WHERE agent_id = '{drift}' AND version_number = 4"
    ))
    .await
    .expect("corrupt: rewrite the newest snapshot");

    let (ok, output) = run_verify(&stack).await;
    assert!(!ok, "verify must fail on a corrupted database:\n{output}");
    assert!(
        output.contains(&format!(
            "agent {gap}: version rows are not 1..4: missing [2]"
        )),
        "{output}"
    );
    assert!(
        output.contains(&format!(
            "agent {drift}: current configuration differs from the newest snapshot"
        )),
        "{output}"
    );
    // Each edit also breaks the resource's hash chain at that row.
    assert!(
        output.contains(&format!(
            "agent_versions tenant acme agent {gap} position 3: the first broken link"
        )),
        "{output}"
    );
    assert!(
        output.contains(&format!(
            "agent_versions tenant acme agent {drift} position 4: the first broken link"
        )),
        "{output}"
    );
    assert!(
        output.contains("verify: 3 resources checked, 4 problems"),
        "{output}"
    );
    drop(db);
    stack.finish().await;
}

#[tokio::test]
async fn a_registry_killed_mid_write_leaves_a_consistent_database() {
    let mut stack = Stack::start().await;
    let id = agent_with_versions(&stack, "crash").await;
    let channel = stack.channel_as("ops", "acme", &["editor"]).await;
    let mut writers = Vec::new();
    for writer in 0..8 {
        let mut agents = pb::agent_service_client::AgentServiceClient::new(channel.clone());
        let id = id.clone();
        writers.push(tokio::spawn(async move {
            let mut applied = 0u32;
            for round in 0..1000 {
                let update = pb::UpdateAgentRequest {
                    agent: Some(pb::Agent {
                        id: id.clone(),
                        goal: format!("{writer}/{round}"),
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["goal".into()],
                    }),
                    change_description: String::new(),
                    ..Default::default()
                };
                if agents.update_agent(update).await.is_err() {
                    break;
                }
                applied += 1;
            }
            applied
        }));
    }
    // Kill once writes are flowing: wait until some versions exist.
    let flowing = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while stack
            .database
            .count(&format!(
                "SELECT COUNT(*) FROM agent_versions WHERE agent_id = '{id}'"
            ))
            .await
            < 50
        {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(flowing.is_ok(), "writes never started");
    let registry_launch_db = stack.database.url();
    stack.registry.signal("KILL");
    for writer in writers {
        writer.await.expect("writer ends when the registry dies");
    }

    let launch = Launch::default()
        .env("DATABASE_URL", registry_launch_db)
        .arg("verify");
    let (ok, output) = Process::run_to_exit(&binary("registry-service"), launch).await;
    assert!(
        ok.success(),
        "the database is consistent after SIGKILL:\n{output}"
    );
    assert!(output.contains("0 problems"), "{output}");
    let versions = stack
        .database
        .count(&format!(
            "SELECT COUNT(*) FROM agent_versions WHERE agent_id = '{id}'"
        ))
        .await;
    assert!(versions >= 50);
    stack.crypto.take().expect("crypto").terminate().await;
    stack.database.drop_database().await;
}
