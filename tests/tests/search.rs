//! List filters (AIP-160) and orders (AIP-132) over gRPC: every operator
//! and field selects exactly the resources the test expects from the data
//! it wrote; AND, OR, NOT and parentheses combine as documented (OR binds
//! tighter than AND); orders page both ways without a gap or a duplicate;
//! a page token is bound to its filter and order; mistakes are refused
//! with their position; limits are refused at once; another tenant's rows
//! are never seen; injection attempts are only values.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use proto::v1 as pb;
use proto::v1::agent_service_client::AgentServiceClient;
use proto::v1::provider_service_client::ProviderServiceClient;
use tests::auth::Authed;
use tests::stack::Stack;
use tonic::Code;
use tonic_types::StatusExt;

struct Clients {
    agents: AgentServiceClient<Authed>,
    providers: ProviderServiceClient<Authed>,
}

async fn clients_as(stack: &Stack, tenant: &str) -> Clients {
    let channel = stack.channel_as("alice", tenant, &["admin"]).await;
    Clients {
        agents: AgentServiceClient::new(channel.clone()),
        providers: ProviderServiceClient::new(channel),
    }
}

async fn create_provider(
    c: &mut Clients,
    name: &str,
    kind: pb::ProviderType,
    is_default: bool,
) -> pb::Provider {
    c.providers
        .create_provider(pb::CreateProviderRequest {
            provider: Some(pb::Provider {
                name: name.to_owned(),
                provider_type: kind.into(),
                model_name: "model".to_owned(),
                is_default,
                ..Default::default()
            }),
            change_description: String::new(),
            ..Default::default()
        })
        .await
        .expect("create provider")
        .into_inner()
}

async fn create_agent(
    c: &mut Clients,
    name: &str,
    tools: &[&str],
    provider: Option<&str>,
) -> pb::Agent {
    c.agents
        .create_agent(pb::CreateAgentRequest {
            agent: Some(pb::Agent {
                name: name.to_owned(),
                role: "Researcher".to_owned(),
                goal: "Find things".to_owned(),
                tools: tools.iter().map(|t| (*t).to_owned()).collect(),
                llm_provider_id: provider.map(str::to_owned),
                ..Default::default()
            }),
            change_description: String::new(),
            ..Default::default()
        })
        .await
        .expect("create agent")
        .into_inner()
}

/// Points `label` of agent `id` at its version `version`.
async fn label_agent(c: &mut Clients, id: &str, label: &str, version: i64) {
    c.agents
        .set_agent_label(pb::SetAgentLabelRequest {
            agent_id: id.to_owned(),
            label: label.to_owned(),
            version_number: version,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("label {id} {label}: {e:?}"));
}

/// One page of agents.
async fn agent_page(
    c: &mut Clients,
    filter: &str,
    order_by: &str,
    page_size: i32,
    page_token: &str,
) -> Result<pb::ListAgentsResponse, tonic::Status> {
    c.agents
        .list_agents(pb::ListAgentsRequest {
            page_size,
            page_token: page_token.to_owned(),
            filter: filter.to_owned(),
            order_by: order_by.to_owned(),
            show_deleted: false,
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Every agent `filter` selects in `order_by`'s order, page by page
/// (`page_size` each), with the total_size every page reported.
async fn all_agents(
    c: &mut Clients,
    filter: &str,
    order_by: &str,
    page_size: i32,
) -> (Vec<String>, BTreeSet<i32>) {
    let (mut names, mut totals, mut token) = (Vec::new(), BTreeSet::new(), String::new());
    loop {
        let page = agent_page(c, filter, order_by, page_size, &token)
            .await
            .unwrap_or_else(|e| panic!("{filter:?} / {order_by:?}: {e:?}"));
        names.extend(page.agents.into_iter().map(|a| a.name));
        totals.insert(page.total_size);
        if page.next_page_token.is_empty() {
            return (names, totals);
        }
        token = page.next_page_token;
    }
}

/// The names `filter` selects, sorted, checked against the total_size.
async fn selected(c: &mut Clients, filter: &str) -> Vec<String> {
    let (mut names, totals) = all_agents(c, filter, "", 100).await;
    let count = i32::try_from(names.len()).expect("a small count");
    assert_eq!(totals, BTreeSet::from([count]), "total_size of {filter:?}");
    names.sort();
    names
}

async fn selected_providers(c: &mut Clients, filter: &str) -> Vec<String> {
    let page = c
        .providers
        .list_providers(pb::ListProvidersRequest {
            page_size: 100,
            filter: filter.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("{filter:?}: {e:?}"))
        .into_inner();
    let mut names: Vec<String> = page.providers.into_iter().map(|p| p.name).collect();
    assert_eq!(page.total_size, i32::try_from(names.len()).expect("small"));
    names.sort();
    names
}

/// An RFC 3339 text of a response's timestamp (prost's `Display`).
fn rfc3339(time: Option<&prost_types::Timestamp>) -> String {
    time.expect("a timestamp").to_string()
}

/// The field violations of a refusal: (field, description).
fn violations(status: &tonic::Status) -> Vec<(String, String)> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    status
        .get_details_bad_request()
        .map(|b| {
            b.field_violations
                .into_iter()
                .map(|v| (v.field, v.description))
                .collect()
        })
        .unwrap_or_default()
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|n| (*n).to_owned()).collect()
}

/// UpdateAgent with `paths` of `agent` on agent `id`.
async fn update_agent(c: &mut Clients, id: &str, agent: pb::Agent, paths: &[&str]) -> pb::Agent {
    c.agents
        .update_agent(pb::UpdateAgentRequest {
            agent: Some(pb::Agent {
                id: id.to_owned(),
                ..agent
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: names(paths),
            }),
            change_description: String::new(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("update {paths:?}: {e:?}"))
        .into_inner()
}

/// Where agent `name` is found, with the bystander (on the first provider,
/// with the tool "search"): by its name; by each of `providers`, on which
/// it is where `on` says; by "search" and "scrape", which it has where
/// `has` says.
async fn assert_found(
    c: &mut Clients,
    name: &str,
    providers: [&str; 2],
    on: [bool; 2],
    has: [bool; 2],
) {
    assert_eq!(
        selected(c, &format!("name = {name:?}")).await,
        [name],
        "by name"
    );
    // (filter, whether the agent matches it); the bystander matches the
    // first of each pair.
    let filters = [
        (format!("provider = {:?}", providers[0]), on[0]),
        (format!("provider = {:?}", providers[1]), on[1]),
        (r#"tool:"search""#.to_owned(), has[0]),
        (r#"tool:"scrape""#.to_owned(), has[1]),
    ];
    for (at, (filter, matches)) in filters.into_iter().enumerate() {
        let mut expected = if at % 2 == 0 {
            vec!["bystander"]
        } else {
            vec![]
        };
        if matches {
            expected.push(name);
            expected.sort_unstable();
        }
        assert_eq!(selected(c, &filter).await, expected, "{filter}");
    }
}

/// An update sets only the columns whose value moved (SQLite rewrites an
/// index entry for every column an UPDATE sets, moved or not): each change
/// moves the agent in the indexes over what it changed, leaves it in the
/// others, and a rollback moves it back in all of them at once.
#[tokio::test]
async fn each_change_moves_the_agent_in_the_indexes_over_what_it_changed() {
    let stack = Stack::start().await;
    let mut c = clients_as(&stack, "acme").await;
    let p1 = create_provider(&mut c, "p-one", pb::ProviderType::Openai, false)
        .await
        .id;
    let p2 = create_provider(&mut c, "p-two", pb::ProviderType::Openai, false)
        .await
        .id;
    let agent = create_agent(&mut c, "first", &["search"], Some(&p1)).await;
    create_agent(&mut c, "bystander", &["search"], Some(&p1)).await;
    let (id, providers) = (agent.id.as_str(), [p1.as_str(), p2.as_str()]);
    assert_found(&mut c, "first", providers, [true, false], [true, false]).await;

    // (the change, its mask, then: the name, on p1/p2, has search/scrape)
    let steps = [
        (
            pb::Agent {
                name: "second".to_owned(),
                ..Default::default()
            },
            "name",
            [true, false],
            [true, false],
        ),
        (
            pb::Agent {
                llm_provider_id: Some(p2.clone()),
                ..Default::default()
            },
            "llm_provider_id",
            [false, true],
            [true, false],
        ),
        (
            pb::Agent {
                tools: names(&["scrape"]),
                ..Default::default()
            },
            "tools",
            [false, true],
            [false, true],
        ),
        (
            pb::Agent {
                goal: "Find other things".to_owned(),
                ..Default::default()
            },
            "goal",
            [false, true],
            [false, true],
        ),
    ];
    for (change, path, on, has) in steps {
        update_agent(&mut c, id, change, &[path]).await;
        assert!(
            selected(&mut c, r#"name = "first""#).await.is_empty(),
            "the old name after {path}"
        );
        assert_found(&mut c, "second", providers, on, has).await;
    }

    let back = c
        .agents
        .rollback_agent(pb::RollbackAgentRequest {
            agent_id: id.to_owned(),
            version_number: 1,
            ..Default::default()
        })
        .await
        .expect("rollback to version 1")
        .into_inner();
    assert_eq!((back.name.as_str(), back.version), ("first", 6));
    assert!(
        selected(&mut c, r#"name = "second""#).await.is_empty(),
        "the later name"
    );
    assert_found(&mut c, "first", providers, [true, false], [true, false]).await;
    // The name the rollback left is free again.
    create_agent(&mut c, "second", &[], None).await;
    stack.finish().await;
}

#[tokio::test]
async fn every_agent_field_and_operator_selects_exactly_the_expected_agents() {
    let stack = Stack::start().await;
    let mut c = clients_as(&stack, "acme").await;
    let p1 = create_provider(&mut c, "p-one", pb::ProviderType::Openai, false).await;
    let p2 = create_provider(&mut c, "p-two", pb::ProviderType::Anthropic, false).await;
    let alpha = create_agent(&mut c, "alpha", &["search", "calc"], Some(&p1.id)).await;
    let beta = create_agent(&mut c, "beta", &["search"], Some(&p2.id)).await;
    let gamma = create_agent(&mut c, "gamma", &[], None).await;
    create_agent(&mut c, "alphabet", &["web"], Some(&p1.id)).await;
    create_agent(&mut c, "delta", &["calc"], None).await;
    // beta's tools change: its old tool goes, its new one comes.
    let beta = c
        .agents
        .update_agent(pb::UpdateAgentRequest {
            agent: Some(pb::Agent {
                id: beta.id.clone(),
                tools: names(&["search", "scrape"]),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: names(&["tools"]),
            }),
            change_description: String::new(),
            ..Default::default()
        })
        .await
        .expect("update beta")
        .into_inner();
    let (p1, p2) = (p1.id, p2.id);
    let all = names(&["alpha", "alphabet", "beta", "delta", "gamma"]);

    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            String::new(),
            vec!["alpha", "alphabet", "beta", "delta", "gamma"],
        ),
        (r#"name = "alpha""#.into(), vec!["alpha"]),
        ("name = alpha".into(), vec!["alpha"]),
        (r#"name = "alpha*""#.into(), vec!["alpha", "alphabet"]),
        (
            r#"name != "alpha""#.into(),
            vec!["alphabet", "beta", "delta", "gamma"],
        ),
        (r#"name != "alpha*""#.into(), vec!["beta", "delta", "gamma"]),
        (r#"name < "b""#.into(), vec!["alpha", "alphabet"]),
        (
            r#"name <= "beta""#.into(),
            vec!["alpha", "alphabet", "beta"],
        ),
        (r#"name > "delta""#.into(), vec!["gamma"]),
        (r#"name >= "delta""#.into(), vec!["delta", "gamma"]),
        (format!("provider = {p1:?}"), vec!["alpha", "alphabet"]),
        (format!("provider = {p2}"), vec!["beta"]),
        (
            format!("provider != {p1:?}"),
            vec!["beta", "delta", "gamma"],
        ),
        (r#"provider = """#.into(), vec!["delta", "gamma"]),
        (
            r#"provider != """#.into(),
            vec!["alpha", "alphabet", "beta"],
        ),
        (
            format!("NOT provider = {p1:?}"),
            vec!["beta", "delta", "gamma"],
        ),
        (r#"tool:"search""#.into(), vec!["alpha", "beta"]),
        ("tool : calc".into(), vec!["alpha", "delta"]),
        (r#"tool = "scrape""#.into(), vec!["beta"]),
        (r#"tool:"sear""#.into(), vec![]),
        (
            r#"NOT tool:"search""#.into(),
            vec!["alphabet", "delta", "gamma"],
        ),
        ("-tool:search".into(), vec!["alphabet", "delta", "gamma"]),
        // Precedence: OR binds tighter than AND.
        (
            r#"name = "delta" AND tool:"calc" OR tool:"search""#.into(),
            vec!["delta"],
        ),
        (
            r#"(name = "delta" AND tool:"calc") OR tool:"search""#.into(),
            vec!["alpha", "beta", "delta"],
        ),
        (
            r#"tool:"search" OR tool:"calc" AND name != "alpha""#.into(),
            vec!["beta", "delta"],
        ),
        (
            r#"NOT (tool:"search" OR tool:"calc")"#.into(),
            vec!["alphabet", "gamma"],
        ),
        (
            format!(r#"tool:"search" AND provider = {p1:?}"#),
            vec!["alpha"],
        ),
        (
            r#"name = "gamma" OR tool:"web""#.into(),
            vec!["alphabet", "gamma"],
        ),
        (
            r#"-(name = "alpha*") AND NOT name = "gamma""#.into(),
            vec!["beta", "delta"],
        ),
    ];
    for (filter, expected) in cases {
        assert_eq!(
            selected(&mut c, &filter).await,
            names(&expected),
            "{filter}"
        );
    }

    // Times: created in the order written; beta updated last.
    let beta_created = rfc3339(beta.create_time.as_ref());
    let gamma_created = rfc3339(gamma.create_time.as_ref());
    let beta_updated = rfc3339(beta.update_time.as_ref());
    let alpha_created = rfc3339(alpha.create_time.as_ref());
    let time_cases: Vec<(String, Vec<&str>)> = vec![
        (
            format!("create_time > {beta_created}"),
            vec!["alphabet", "delta", "gamma"],
        ),
        (
            format!("create_time >= {beta_created:?}"),
            vec!["alphabet", "beta", "delta", "gamma"],
        ),
        (format!("create_time < {beta_created}"), vec!["alpha"]),
        (
            format!("create_time <= {beta_created}"),
            vec!["alpha", "beta"],
        ),
        (format!("create_time = {gamma_created}"), vec!["gamma"]),
        (
            format!("create_time != {alpha_created}"),
            vec!["alphabet", "beta", "delta", "gamma"],
        ),
        (format!("update_time >= {beta_updated}"), vec!["beta"]),
        (
            format!("update_time < {beta_updated}"),
            vec!["alpha", "alphabet", "delta", "gamma"],
        ),
        (
            "create_time > 2000-01-01T00:00:00+02:00".into(),
            vec!["alpha", "alphabet", "beta", "delta", "gamma"],
        ),
        ("create_time < 2000-01-01T00:00:00Z".into(), vec![]),
    ];
    for (filter, expected) in time_cases {
        assert_eq!(
            selected(&mut c, &filter).await,
            names(&expected),
            "{filter}"
        );
    }
    assert_eq!(selected(&mut c, "").await, all);

    // A deleted agent's tools go with it.
    c.agents
        .delete_agent(pb::DeleteAgentRequest {
            id: alpha.id.clone(),
            etag: String::new(),
            ..Default::default()
        })
        .await
        .expect("delete alpha");
    assert_eq!(selected(&mut c, "tool:calc").await, names(&["delta"]));
    stack.finish().await;
}

/// A tool more than 1,000 agents have is tested per row (`EXISTS`), a
/// rarer one by listing its agents (`IN`): both select the same agents,
/// negated too, alone and combined, in every order.
#[tokio::test]
async fn a_tool_many_agents_have_selects_as_exactly_as_a_rare_one() {
    const AGENTS: usize = 1_150;
    let stack = Stack::start().await;
    let c = clients_as(&stack, "acme").await;
    // Agent i has "common" unless i % 10 == 0, and "rare" when i % 100 == 1.
    let tools_of = |i: usize| -> Vec<&'static str> {
        let mut tools = Vec::new();
        if !i.is_multiple_of(10) {
            tools.push("common");
        }
        if i % 100 == 1 {
            tools.push("rare");
        }
        tools
    };
    // Labels as the tools: "stable" where "common", "canary" where "rare"
    // (the label field is a membership of the labels table every kind
    // shares, tested per row or by its owners as a tool is).
    let mut writers = tokio::task::JoinSet::new();
    for worker in 0..16 {
        let mut c = Clients {
            agents: c.agents.clone(),
            providers: c.providers.clone(),
        };
        writers.spawn(async move {
            for i in (worker..AGENTS).step_by(16) {
                let tools = tools_of(i);
                let agent = create_agent(&mut c, &format!("agent-{i:04}"), &tools, None).await;
                for (tool, label) in [("common", "stable"), ("rare", "canary")] {
                    if tools.contains(&tool) {
                        label_agent(&mut c, &agent.id, label, 1).await;
                    }
                }
            }
        });
    }
    while let Some(done) = writers.join_next().await {
        done.expect("a writer");
    }
    let mut c = c;
    let named = |keep: &dyn Fn(usize) -> bool| -> Vec<String> {
        (0..AGENTS)
            .filter(|i| keep(*i))
            .map(|i| format!("agent-{i:04}"))
            .collect()
    };
    let common = named(&|i| !i.is_multiple_of(10));
    assert!(common.len() > 1_000, "more agents than FEW_OWNERS");
    for (filter, expected) in [
        ("tool:common", common.clone()),
        ("NOT tool:common", named(&|i| i.is_multiple_of(10))),
        ("tool:rare", named(&|i| i % 100 == 1)),
        ("tool:common AND tool:rare", named(&|i| i % 100 == 1)),
        (
            "tool:common AND NOT tool:rare",
            named(&|i| !i.is_multiple_of(10) && i % 100 != 1),
        ),
        (
            r#"tool:common AND name = "agent-10*""#,
            named(&|i| (1000..1100).contains(&i) && !i.is_multiple_of(10)),
        ),
        ("label:stable", common.clone()),
        ("NOT label:stable", named(&|i| i.is_multiple_of(10))),
        ("label:canary", named(&|i| i % 100 == 1)),
        (
            "label:stable AND NOT label:canary",
            named(&|i| !i.is_multiple_of(10) && i % 100 != 1),
        ),
    ] {
        let (mut listed, totals) = all_agents(&mut c, filter, "", 100).await;
        let counted = i32::try_from(expected.len().min(1_000)).expect("small");
        assert_eq!(totals, BTreeSet::from([counted]), "{filter}");
        listed.sort();
        assert_eq!(listed, expected, "{filter}");
    }
    // Paged in name order both ways, 7 at a time.
    let (by_name, _) = all_agents(&mut c, "tool:common", "name desc", 7).await;
    let mut descending = common.clone();
    descending.reverse();
    assert_eq!(by_name, descending);
    stack.finish().await;
}

/// Without a filter, `total_size` counts the tenant's agents up to 10,000
/// (agent.proto, ListAgentsResponse): a tenant just under that answers its
/// exact count; one past it answers 10,000 ("at least"), and paging still
/// lists every agent once, in order.
#[tokio::test]
async fn a_tenant_past_the_counted_rows_answers_the_cap_and_pages_to_every_agent() {
    const COUNTED_ROWS: usize = 10_000;
    let stack = Stack::start().await;
    let c = clients_as(&stack, "acme").await;
    let create_range = |range: std::ops::Range<usize>| {
        let mut writers = tokio::task::JoinSet::new();
        for worker in 0..16 {
            let mut c = Clients {
                agents: c.agents.clone(),
                providers: c.providers.clone(),
            };
            let range = range.clone();
            writers.spawn(async move {
                for i in range.skip(worker).step_by(16) {
                    create_agent(&mut c, &format!("agent-{i:05}"), &[], None).await;
                }
            });
        }
        writers
    };
    let mut writers = create_range(0..COUNTED_ROWS - 1);
    while let Some(done) = writers.join_next().await {
        done.expect("a writer");
    }
    let mut reader = Clients {
        agents: c.agents.clone(),
        providers: c.providers.clone(),
    };
    let under = agent_page(&mut reader, "", "", 100, "")
        .await
        .expect("a page");
    assert_eq!(under.total_size, 9_999, "exact under the cap");

    let mut writers = create_range(COUNTED_ROWS - 1..COUNTED_ROWS + 1);
    while let Some(done) = writers.join_next().await {
        done.expect("a writer");
    }
    let (listed, totals) = all_agents(&mut reader, "", "name", 100).await;
    assert_eq!(totals, BTreeSet::from([10_000]), "every page: the cap");
    let expected: Vec<String> = (0..=COUNTED_ROWS)
        .map(|i| format!("agent-{i:05}"))
        .collect();
    assert_eq!(listed.len(), 10_001);
    assert_eq!(listed, expected, "every agent once, in name order");
    // A filter counts its own matches, exactly under its own cap.
    let (some, totals) = all_agents(&mut reader, r#"name = "agent-0999*""#, "", 100).await;
    assert_eq!(some.len(), 10);
    assert_eq!(totals, BTreeSet::from([10]));
    stack.finish().await;
}

/// `label`: the resources holding a label, as the label moves and goes;
/// `latest` is held by every resource; agents' and providers' labels are
/// apart, and so are tenants'.
#[tokio::test]
async fn a_label_selects_exactly_the_resources_that_hold_it() {
    let stack = Stack::start().await;
    let mut c = clients_as(&stack, "acme").await;
    let openai = create_provider(&mut c, "openai", pb::ProviderType::Openai, true).await;
    create_provider(&mut c, "claude", pb::ProviderType::Anthropic, false).await;
    let alpha = create_agent(&mut c, "alpha", &["calc"], None).await;
    let beta = create_agent(&mut c, "beta", &[], None).await;
    let gamma = create_agent(&mut c, "gamma", &["calc"], None).await;
    // beta gets a second version, so a label can move within it.
    c.agents
        .update_agent(pb::UpdateAgentRequest {
            agent: Some(pb::Agent {
                id: beta.id.clone(),
                goal: "Find more".to_owned(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: names(&["goal"]),
            }),
            ..Default::default()
        })
        .await
        .expect("update beta");
    label_agent(&mut c, &alpha.id, "production", 1).await;
    label_agent(&mut c, &beta.id, "production", 1).await;
    label_agent(&mut c, &beta.id, "canary", 2).await;
    // Another tenant's agent of the same name holds "canary": not ours.
    let mut other = clients_as(&stack, "globex").await;
    let theirs = create_agent(&mut other, "gamma", &[], None).await;
    label_agent(&mut other, &theirs.id, "canary", 1).await;
    // A provider's "staging" is not an agent's.
    c.providers
        .set_provider_label(pb::SetProviderLabelRequest {
            provider_id: openai.id.clone(),
            label: "staging".to_owned(),
            version_number: 1,
            ..Default::default()
        })
        .await
        .expect("label the provider");

    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("label:production", vec!["alpha", "beta"]),
        (r#"label = "canary""#, vec!["beta"]),
        ("label:prod", vec![]),
        ("label:staging", vec![]),
        ("NOT label:production", vec!["gamma"]),
        ("label:production AND label:canary", vec!["beta"]),
        ("label:production OR label:canary", vec!["alpha", "beta"]),
        ("label:production AND tool:calc", vec!["alpha"]),
        ("label:latest", vec!["alpha", "beta", "gamma"]),
        ("NOT label:latest", vec![]),
        ("label:latest AND NOT label:production", vec!["gamma"]),
    ];
    for (filter, expected) in cases {
        assert_eq!(selected(&mut c, filter).await, names(&expected), "{filter}");
    }
    assert_eq!(
        selected(&mut other, "label:canary").await,
        names(&["gamma"])
    );
    assert_eq!(
        selected_providers(&mut c, "label:staging").await,
        names(&["openai"])
    );
    assert_eq!(
        selected_providers(&mut c, "NOT label:staging AND label:latest").await,
        names(&["claude"])
    );
    assert_eq!(
        selected_providers(&mut c, "label:production").await,
        names(&[])
    );

    // A label that moves stays selected; one deleted is not.
    label_agent(&mut c, &alpha.id, "canary", 1).await;
    c.agents
        .delete_agent_label(pb::DeleteAgentLabelRequest {
            agent_id: beta.id.clone(),
            label: "production".to_owned(),
            ..Default::default()
        })
        .await
        .expect("delete beta's production");
    label_agent(&mut c, &gamma.id, "production", 1).await;
    assert_eq!(
        selected(&mut c, "label:production").await,
        names(&["alpha", "gamma"])
    );
    assert_eq!(
        selected(&mut c, "label:canary").await,
        names(&["alpha", "beta"])
    );

    // A prefix is refused: a label is matched whole.
    let refused = agent_page(&mut c, r#"label = "prod*""#, "", 10, "")
        .await
        .expect_err("a label prefix");
    assert_eq!(
        violations(&refused),
        [(
            "filter".to_owned(),
            "at 8: label takes a whole value, not a prefix ('*')".to_owned()
        )]
    );
    stack.finish().await;
}

#[tokio::test]
async fn every_provider_field_selects_exactly_the_expected_providers() {
    let stack = Stack::start().await;
    let mut c = clients_as(&stack, "acme").await;
    create_provider(&mut c, "openai-main", pb::ProviderType::Openai, true).await;
    let claude = create_provider(&mut c, "claude", pb::ProviderType::Anthropic, false).await;
    create_provider(&mut c, "openai-spare", pb::ProviderType::Openai, false).await;
    let claude_created = rfc3339(claude.create_time.as_ref());
    for (filter, expected) in [
        (
            "provider_type = OPENAI".to_owned(),
            vec!["openai-main", "openai-spare"],
        ),
        (
            r#"provider_type = "PROVIDER_TYPE_ANTHROPIC""#.to_owned(),
            vec!["claude"],
        ),
        ("provider_type != OPENAI".to_owned(), vec!["claude"]),
        ("is_default = true".to_owned(), vec!["openai-main"]),
        (
            "is_default = false".to_owned(),
            vec!["claude", "openai-spare"],
        ),
        (
            "is_default != true".to_owned(),
            vec!["claude", "openai-spare"],
        ),
        (
            r#"name = "openai-*""#.to_owned(),
            vec!["openai-main", "openai-spare"],
        ),
        (
            format!("create_time > {claude_created} OR name = claude"),
            vec!["claude", "openai-spare"],
        ),
        (
            format!("update_time < {claude_created}"),
            vec!["openai-main"],
        ),
    ] {
        assert_eq!(
            selected_providers(&mut c, &filter).await,
            names(&expected),
            "{filter}"
        );
    }
    // Providers have no tool field: it is named as unknown.
    let refused = c
        .providers
        .list_providers(pb::ListProvidersRequest {
            filter: "tool:x".to_owned(),
            ..Default::default()
        })
        .await
        .expect_err("refused");
    assert_eq!(
        violations(&refused),
        [(
            "filter".to_owned(),
            r#"at 0: unknown field "tool"; fields: name, provider_type, is_default, create_time, update_time, label, deleted"#
                .to_owned()
        )]
    );
    stack.finish().await;
}

#[tokio::test]
async fn orders_page_both_ways_without_gaps_or_duplicates() {
    let stack = Stack::start().await;
    let mut c = clients_as(&stack, "acme").await;
    // Names in an order unlike their creation order; every third agent has
    // the tool "x".
    let created: Vec<String> = (0..23)
        .map(|i| format!("agent-{:02}", (i * 7) % 23))
        .collect();
    let mut ids = Vec::new();
    for (i, name) in created.iter().enumerate() {
        let tools: &[&str] = if i.is_multiple_of(3) { &["x"] } else { &[] };
        ids.push(create_agent(&mut c, name, tools, None).await.id);
    }
    // Update some agents, latest last: update order = untouched agents in
    // creation order, then the updated ones in the order updated.
    let updated = [5usize, 0, 17, 9];
    for i in updated {
        c.agents
            .update_agent(pb::UpdateAgentRequest {
                agent: Some(pb::Agent {
                    id: ids[i].clone(),
                    goal: "Find more".to_owned(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: names(&["goal"]),
                }),
                change_description: String::new(),
                ..Default::default()
            })
            .await
            .expect("update");
    }
    let mut by_name = created.clone();
    by_name.sort();
    let mut by_update: Vec<String> = (0..created.len())
        .filter(|i| !updated.contains(i))
        .map(|i| created[i].clone())
        .collect();
    by_update.extend(updated.iter().map(|i| created[*i].clone()));
    let reversed = |list: &[String]| list.iter().rev().cloned().collect::<Vec<_>>();
    let with_x: Vec<String> = created.iter().step_by(3).cloned().collect();
    let mut with_x_by_name = with_x.clone();
    with_x_by_name.sort();

    for (order_by, filter, expected) in [
        ("", "", created.clone()),
        ("name", "", by_name.clone()),
        ("name asc", "", by_name.clone()),
        ("name desc", "", reversed(&by_name)),
        ("create_time", "", created.clone()),
        ("create_time desc", "", reversed(&created)),
        ("update_time", "", by_update.clone()),
        ("update_time desc", "", reversed(&by_update)),
        ("update_time desc, name", "", reversed(&by_update)),
        ("create_time, name desc", "", created.clone()),
        ("name desc", "tool:x", reversed(&with_x_by_name)),
        ("create_time desc", "tool:x", reversed(&with_x)),
    ] {
        for page_size in [1, 4, 100] {
            let (listed, totals) = all_agents(&mut c, filter, order_by, page_size).await;
            assert_eq!(listed, expected, "{order_by:?} {filter:?} by {page_size}");
            let count = i32::try_from(expected.len()).expect("small");
            assert_eq!(totals, BTreeSet::from([count]));
        }
    }
    stack.finish().await;
}

/// A filtered page read from a window (`REGISTRY_LIST_SCAN_STEPS=0`:
/// every filtered page is; a window of 4 rows) tests at most those rows:
/// pages may be short or empty and still have a next page, and paging on
/// yields exactly the matches, in order, each once — in every order, for
/// a filter nothing meets too. The unfiltered listing is not windowed.
#[tokio::test]
async fn filtered_pages_read_from_windows_page_to_exactly_the_matches() {
    const WINDOW: usize = 4;
    let stack = Stack::start_windowed(WINDOW).await;
    let mut c = clients_as(&stack, "acme").await;
    let mut providers = Vec::new();
    for name in ["pa", "pb", "pc"] {
        let kind = pb::ProviderType::Openai;
        providers.push(create_provider(&mut c, name, kind, false).await.id);
    }
    // Agent i: provider i % 3; the tool "search" when i is even, "rare"
    // for 7 and 19 (both on pb). Names unlike the creation order.
    let count = 24usize;
    let name_of = |i: usize| format!("agent-{:02}", (i * 5) % count);
    let mut ids = Vec::new();
    for i in 0..count {
        let mut tools = Vec::new();
        if i.is_multiple_of(2) {
            tools.push("search");
        }
        if i == 7 || i == 19 {
            tools.push("rare");
        }
        let provider = Some(providers[i % 3].as_str());
        ids.push(create_agent(&mut c, &name_of(i), &tools, provider).await.id);
    }
    // Updated last: 10, then 3.
    let updated = [10usize, 3];
    for i in updated {
        let agent = pb::Agent {
            goal: "Find more".to_owned(),
            ..Default::default()
        };
        update_agent(&mut c, &ids[i], agent, &["goal"]).await;
    }
    let by_update: Vec<usize> = (0..count)
        .filter(|i| !updated.contains(i))
        .chain(updated)
        .collect();
    let (pa, pb_id) = (&providers[0], &providers[1]);
    // (filter, which agents it selects)
    type Selects = fn(usize) -> bool;
    let filters: [(String, Selects); 4] = [
        (format!("provider = {pa:?} AND tool:search"), |i| i % 6 == 0),
        (format!("provider = {pa:?} AND tool:rare"), |_| false),
        (format!("provider = {pb_id:?} AND tool:rare"), |i| {
            i == 7 || i == 19
        }),
        ("NOT tool:search".to_owned(), |i| i % 2 == 1),
    ];
    for (filter, selects) in &filters {
        let in_creation: Vec<usize> = (0..count).filter(|i| selects(*i)).collect();
        let mut by_name = in_creation.clone();
        by_name.sort_by_key(|i| name_of(*i));
        let updated_order: Vec<usize> = by_update.iter().copied().filter(|i| selects(*i)).collect();
        let reversed = |list: &[usize]| list.iter().rev().copied().collect::<Vec<_>>();
        for (order_by, expected) in [
            ("", in_creation.clone()),
            ("name desc", reversed(&by_name)),
            ("create_time", in_creation.clone()),
            ("update_time desc", reversed(&updated_order)),
        ] {
            let expected: Vec<String> = expected.into_iter().map(name_of).collect();
            let page_size = 3;
            let (mut listed, mut calls, mut token) = (Vec::new(), 0, String::new());
            loop {
                let page = agent_page(&mut c, filter, order_by, page_size, &token)
                    .await
                    .unwrap_or_else(|e| panic!("{filter:?} / {order_by:?}: {e:?}"));
                calls += 1;
                assert!(
                    page.agents.len() <= 3,
                    "{filter:?} {order_by:?}: a page of 3"
                );
                let on_page = i32::try_from(page.agents.len()).expect("small");
                assert_eq!(page.total_size, on_page, "a windowed page counts its own");
                listed.extend(page.agents.into_iter().map(|a| a.name));
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
            assert_eq!(listed, expected, "{filter:?} / {order_by:?}");
            // Each call tested at most a window of rows: 24 rows took at
            // least 6 calls, whatever the filter selects.
            assert!(
                calls >= count / WINDOW,
                "{filter:?} / {order_by:?}: {calls} calls"
            );
        }
    }
    // Unfiltered: full pages, the tenant's count.
    let (listed, totals) = all_agents(&mut c, "", "name desc", 5).await;
    assert_eq!(listed.len(), count);
    assert_eq!(totals, BTreeSet::from([24]));
    stack.finish().await;
}

/// A window is shared among the memberships a filter tests (each a lookup
/// per row): with two, a window of 4 tests 2 rows a page, so a page holds
/// at most 2 matches even when every row matches, and paging on still
/// yields each match once, in order.
#[tokio::test]
async fn a_window_is_shared_among_the_memberships_a_filter_tests() {
    const WINDOW: usize = 4;
    let stack = Stack::start_windowed(WINDOW).await;
    let mut c = clients_as(&stack, "acme").await;
    let count = 8;
    let mut names = Vec::new();
    for i in 0..count {
        let name = format!("agent-{i}");
        create_agent(&mut c, &name, &["search", "browse"], None).await;
        names.push(name);
    }
    for (filter, per_page) in [
        ("tool:search", WINDOW),
        ("tool:search OR tool:browse", WINDOW / 2),
        ("tool:search AND tool:browse", WINDOW / 2),
    ] {
        let (mut listed, mut pages, mut token) = (Vec::new(), Vec::new(), String::new());
        loop {
            let page = agent_page(&mut c, filter, "name", 100, &token)
                .await
                .unwrap_or_else(|e| panic!("{filter:?}: {e:?}"));
            pages.push(page.agents.len());
            listed.extend(page.agents.into_iter().map(|a| a.name));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!(listed, names, "{filter:?}");
        assert!(
            pages.iter().all(|&n| n <= per_page) && pages[0] == per_page,
            "{filter:?}: pages of {pages:?}, {per_page} rows a window"
        );
    }
    stack.finish().await;
}

/// A fresh database of the suite's kind and one connection to it, as the
/// registry opens it (no schema yet).
async fn fresh_connection() -> (tests::stack::TestDatabase, sea_orm::DatabaseConnection) {
    let database = tests::stack::TestDatabase::fresh().await;
    let db = registry_service::store::connect(&registry_service::store::DatabaseSettings {
        url: database.url(),
        max_connections: 1,
        acquire_timeout: Duration::from_secs(5),
        sqlite_cache_mib: 2,
    })
    .await
    .expect("connect");
    (database, db)
}

/// What bounds a filtered page's query on either database: a query that
/// would run for minutes (a count to ten billion) stops at the end of its
/// budget — SQLite's instructions, PostgreSQL's time — and answers that it
/// ran out, not an error; the store reads on afterwards, and on
/// PostgreSQL the pooled connection keeps no timeout.
#[tokio::test]
async fn a_bounded_read_stops_at_its_end_on_either_database() {
    use registry_service::store::{Store, search::ListScan};
    use registry_service::telemetry::RegistryMetrics;
    use sea_orm::{ConnectionTrait, Statement};

    let (database, db) = fresh_connection().await;
    let backend = db.get_database_backend();
    let scan = ListScan {
        steps: 50_000,
        postgres_time: Duration::from_millis(50),
        window: 10,
    };
    let store = Store::new(db.clone(), &RegistryMetrics::default(), (0, 0)).with_list_scan(scan);
    let endless = || {
        Statement::from_string(
            backend,
            "WITH RECURSIVE n(i) AS (SELECT CAST(1 AS BIGINT) UNION ALL \
             SELECT i + 1 FROM n WHERE i < 10000000000) SELECT COUNT(*) AS counted FROM n",
        )
    };
    for round in 0..2 {
        let began = Instant::now();
        let stopped = tokio::time::timeout(
            Duration::from_secs(20),
            store.query_within(endless(), scan.steps),
        )
        .await
        .expect("stopped long before 20 s")
        .expect("a stopped read is no error");
        assert!(
            stopped.is_none(),
            "round {round}: stopped after {:?}",
            began.elapsed()
        );
        let seven = Statement::from_string(backend, "SELECT CAST(7 AS BIGINT) AS seven");
        let rows = store
            .query_within(seven, scan.steps)
            .await
            .expect("the next read")
            .expect("within its budget");
        let seven: i64 = rows[0].try_get("", "seven").expect("a number");
        assert_eq!(seven, 7);
    }
    if database.is_postgres() {
        let show = Statement::from_string(backend, "SHOW statement_timeout");
        let row = db.query_one_raw(show).await.expect("SHOW").expect("a row");
        let timeout: String = row.try_get_by_index(0).expect("text");
        assert_eq!(timeout, "0", "the pool's connection keeps no timeout");
    }
    db.close().await.expect("close");
    database.drop_database().await;
}

/// A window tests a tool most of a tenant's agents have row by row, one
/// index probe per window row, on either database: PostgreSQL would
/// otherwise turn the `EXISTS` into a join, which it may answer by reading
/// every owner of the tool first (BENCHMARKS.md, "A window probes each row
/// on PostgreSQL").
#[tokio::test]
async fn a_window_tests_a_common_tool_row_by_row_on_either_database() {
    use registry_service::store::{self, agents::Agents, search::Search};
    use sea_orm::sea_query::{Alias, Asterisk, Query};
    use sea_orm::{ConnectionTrait, DbBackend, Statement};

    let (database, db) = fresh_connection().await;
    store::migrate_up(&db).await.expect("migrate");
    let backend = db.get_database_backend();
    // More owners than a filter lists (search::FEW_OWNERS is 1,000): the
    // tool is common, so the condition tests it per row.
    let owners = registry_service::store::search::FEW_OWNERS + 1;
    let seed = format!(
        "INSERT INTO agents (id, tenant_id, name, config, tools, version, create_time, \
         update_time, created_by, updated_by) \
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {owners}) \
         SELECT 'agent-' || i, 't', 'agent-' || i, '{{}}', '[\"common\"]', 1, \
         CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, 'seed', 'seed' FROM n"
    );
    db.execute_unprepared(&seed).await.expect("seed");
    let counted = db
        .query_one_raw(Statement::from_string(
            backend,
            "SELECT COUNT(*) AS owners FROM agent_tools WHERE tool = 'common'",
        ))
        .await
        .expect("count")
        .expect("a row");
    let counted: i64 = counted.try_get("", "owners").expect("a number");
    assert_eq!(
        u64::try_from(counted).expect("a count"),
        owners,
        "the triggers list the tool"
    );

    let search = Search::new::<Agents>("t", (r#"tool:"common""#, "update_time desc"), backend)
        .expect("a valid filter");
    let condition = search
        .conditions::<Agents>(&db)
        .await
        .expect("the condition")
        .expect("a filter")
        .window;
    let page = Query::select()
        .column(Asterisk)
        .from(Alias::new("agents"))
        .cond_where(condition)
        .limit(11)
        .to_owned();
    let statement = backend.build(&page);
    let (explain, column) = match backend {
        DbBackend::Postgres => ("EXPLAIN ", "QUERY PLAN"),
        _ => ("EXPLAIN QUERY PLAN ", "detail"),
    };
    let explained = Statement::from_sql_and_values(
        backend,
        format!("{explain}{}", statement.sql),
        statement.values.map(|v| v.0).unwrap_or_default(),
    );
    let plan = db
        .query_all_raw(explained)
        .await
        .expect("explain")
        .iter()
        .map(|row| row.try_get::<String>("", column).expect("a plan line"))
        .collect::<Vec<_>>()
        .join("\n");
    if database.is_postgres() {
        assert!(
            plan.contains("SubPlan") && !plan.contains("Semi Join"),
            "the window probes the tool per row, not by a join:\n{plan}"
        );
    } else {
        // SQLite runs an EXISTS as a lookup per row of the outer scan.
        assert!(
            plan.contains("SEARCH agent_tools") && plan.contains("agent_id=?"),
            "the tool is probed per row:\n{plan}"
        );
    }
    db.close().await.expect("close");
    database.drop_database().await;
}

#[tokio::test]
async fn a_page_token_is_bound_to_its_filter_and_order() {
    let stack = Stack::start().await;
    let mut c = clients_as(&stack, "acme").await;
    for name in ["a1", "a2", "a3", "b1"] {
        create_agent(&mut c, name, &["t"], None).await;
    }
    let first = agent_page(&mut c, r#"name = "a*""#, "name desc", 1, "")
        .await
        .expect("first page");
    assert_eq!(first.agents[0].name, "a3");
    let token = first.next_page_token;
    // The same filter and order, written differently: the same request.
    let next = agent_page(&mut c, r#"( name="a*" )"#, " name  desc ", 1, &token)
        .await
        .expect("the same request, spelled otherwise");
    assert_eq!(next.agents[0].name, "a2");

    for (filter, order_by) in [
        (r#"name = "b*""#, "name desc"),
        (r#"name = "a*" AND tool:t"#, "name desc"),
        (r#"name = "a*""#, "name"),
        (r#"name = "a*""#, "create_time desc"),
        (r#"name = "a*""#, ""),
        ("", "name desc"),
        ("", ""),
    ] {
        let refused = agent_page(&mut c, filter, order_by, 1, &token)
            .await
            .expect_err("another request's token");
        assert_eq!(
            violations(&refused),
            [(
                "page_token".to_owned(),
                "is not a page token of this request".to_owned()
            )],
            "{filter:?} {order_by:?}"
        );
    }
    // A plain listing's token is refused with a filter.
    let plain = agent_page(&mut c, "", "", 1, "").await.expect("plain");
    let refused = agent_page(&mut c, "tool:t", "", 1, &plain.next_page_token)
        .await
        .expect_err("refused");
    assert_eq!(violations(&refused)[0].0, "page_token");
    stack.finish().await;
}

#[tokio::test]
async fn mistakes_are_refused_with_their_position_and_what_was_expected() {
    let stack = Stack::start().await;
    let mut c = clients_as(&stack, "acme").await;
    let filter_cases = [
        (r#"name = "x" AND"#, "at 14: expected a comparison or '('"),
        ("name =", "at 6: expected a value after '='"),
        (
            "name",
            r#"at 4: expected a comparator (=, !=, <, <=, >, >= or :) after "name""#,
        ),
        ("(name = x", "at 9: expected AND, OR or ')'"),
        ("name = x)", "at 8: a ')' without its '('"),
        (
            "name = x y = z",
            "at 9: expected AND, OR or the end of the filter",
        ),
        (r#"name = "open"#, "at 7: this string has no closing '\"'"),
        (
            r#"nme = "x""#,
            r#"at 0: unknown field "nme"; fields: name, provider, tool, create_time, update_time, label, deleted"#,
        ),
        (
            "tool > x",
            "at 0: tool takes : or = (has; negate with NOT) (not '>')",
        ),
        ("provider < x", "at 0: provider takes = or != (not '<')"),
        (
            "name : x",
            "at 0: name takes =, !=, <, <=, > or >= (not ':')",
        ),
        (
            "create_time > yesterday",
            r#"at 14: create_time takes an RFC 3339 time such as 2026-12-07T10:00:00Z (got "yesterday")"#,
        ),
        (
            "tool = x*",
            "at 7: tool takes a whole value, not a prefix ('*')",
        ),
        ("name < x*", "at 7: a prefix ('*') goes with = or != only"),
    ];
    for (filter, expected) in filter_cases {
        let refused = agent_page(&mut c, filter, "", 0, "")
            .await
            .expect_err(filter);
        assert_eq!(
            violations(&refused),
            [("filter".to_owned(), expected.to_owned())],
            "{filter}"
        );
    }
    for (order_by, expected) in [
        (
            "id",
            r#"cannot order by "id"; keys: name, create_time, update_time"#,
        ),
        (
            "name sideways",
            r#""name sideways" is not `key`, `key asc` or `key desc`"#,
        ),
        ("name, name", "names name twice"),
        (
            "name, create_time, update_time",
            "names at most 2 keys (the id always follows them)",
        ),
    ] {
        let refused = agent_page(&mut c, "", order_by, 0, "")
            .await
            .expect_err(order_by);
        assert_eq!(
            violations(&refused),
            [("order_by".to_owned(), expected.to_owned())],
            "{order_by}"
        );
    }
    // Both wrong: one violation each.
    let refused = agent_page(&mut c, "name =", "id", 0, "")
        .await
        .expect_err("both");
    let fields: Vec<String> = violations(&refused).into_iter().map(|v| v.0).collect();
    assert_eq!(fields, ["filter", "order_by"]);
    stack.finish().await;
}

#[tokio::test]
async fn oversized_and_deep_filters_are_refused_at_once() {
    let stack = Stack::start().await;
    let mut c = clients_as(&stack, "acme").await;
    create_agent(&mut c, "a", &[], None).await;
    let long = format!(r#"name = "{}""#, "x".repeat(1016));
    assert_eq!(long.len(), 1025);
    let at_limit = format!(r#"name = "{}""#, "x".repeat(1015));
    assert_eq!(selected(&mut c, &at_limit).await, Vec::<String>::new());
    let comparisons = vec!["name = a"; 33].join(" OR ");
    for (filter, expected) in [
        (long, "must be at most 1024 bytes (got 1025)".to_owned()),
        (
            "(".repeat(10_000),
            "must be at most 1024 bytes (got 10000)".to_owned(),
        ),
        (
            "(".repeat(1024),
            "at 16: parentheses nest deeper than 16".to_owned(),
        ),
        (
            comparisons.clone(),
            format!("at {}: more than 32 comparisons", comparisons.len() - 8),
        ),
    ] {
        let started = Instant::now();
        let refused = agent_page(&mut c, &filter, "", 0, "")
            .await
            .expect_err("refused");
        let took = started.elapsed();
        assert_eq!(violations(&refused), [("filter".to_owned(), expected)]);
        assert!(took < Duration::from_secs(1), "{took:?}");
    }
    // At the limits, accepted.
    let deep = format!("{}name = a{}", "(".repeat(16), ")".repeat(16));
    assert_eq!(selected(&mut c, &deep).await, names(&["a"]));
    let many = vec!["name = a"; 32].join(" OR ");
    assert_eq!(selected(&mut c, &many).await, names(&["a"]));
    stack.finish().await;
}

#[tokio::test]
async fn a_filter_never_sees_another_tenants_rows() {
    let stack = Stack::start().await;
    let mut acme = clients_as(&stack, "acme").await;
    let mut globex = clients_as(&stack, "globex").await;
    let acme_provider = create_provider(&mut acme, "shared", pb::ProviderType::Openai, false).await;
    create_agent(&mut acme, "scout", &["search"], Some(&acme_provider.id)).await;
    create_agent(&mut acme, "scribe", &["search"], None).await;
    create_agent(&mut globex, "scout", &["search"], None).await;

    assert_eq!(
        selected(&mut globex, "tool:search").await,
        names(&["scout"])
    );
    assert_eq!(
        selected(&mut globex, "").await,
        names(&["scout"]),
        "globex has one agent"
    );
    assert_eq!(
        selected(&mut globex, &format!("provider = {:?}", acme_provider.id)).await,
        Vec::<String>::new()
    );
    assert_eq!(
        selected(&mut globex, r#"name = "s*" OR NOT name = "s*""#).await,
        names(&["scout"])
    );
    assert_eq!(
        selected(&mut acme, "tool:search").await,
        names(&["scout", "scribe"])
    );
    assert_eq!(
        selected_providers(&mut globex, r#"name = "shared""#).await,
        Vec::<String>::new()
    );
    // A token of acme's is refused in globex.
    let page = agent_page(&mut acme, "tool:search", "name", 1, "")
        .await
        .expect("acme's page");
    let refused = agent_page(&mut globex, "tool:search", "name", 1, &page.next_page_token)
        .await
        .expect_err("acme's token");
    assert_eq!(violations(&refused)[0].0, "page_token");
    stack.finish().await;
}

#[tokio::test]
async fn injection_attempts_are_values_that_match_nothing() {
    let stack = Stack::start().await;
    let mut c = clients_as(&stack, "acme").await;
    create_agent(&mut c, "x", &["search"], None).await;
    create_agent(&mut c, "y", &[], None).await;
    for filter in [
        r#"name = "x' OR 1=1 --""#,
        r#"name = "x' OR '1'='1""#,
        r#"name = "x\" OR \"1\"=\"1""#,
        r#"name = "x'; DROP TABLE agents; --""#,
        r#"tool:"search') OR ('1'='1""#,
        r#"tool:"x' UNION SELECT id FROM agents --""#,
        r#"name = "%""#,
        r#"name = "_""#,
    ] {
        assert_eq!(
            selected(&mut c, filter).await,
            Vec::<String>::new(),
            "{filter}"
        );
    }
    // The table is still there, whole.
    assert_eq!(selected(&mut c, "").await, names(&["x", "y"]));
    // A forged token's cursor is a bound value too: refused or harmless.
    let page = agent_page(&mut c, "", "name", 1, "").await.expect("page");
    assert_eq!(page.agents[0].name, "x");
    stack.finish().await;
}

/// SQLite keeps no planner statistics unless asked, and without them an OR
/// of two indexed fields walks the whole tenant (BENCHMARKS.md, filters):
/// the registry analyzes the tables that grew since their last analysis,
/// every `REGISTRY_SQLITE_STATISTICS_SECONDS`. (PostgreSQL gathers its
/// own: there the setting does nothing.)
#[tokio::test]
async fn sqlite_gathers_planner_statistics_for_tables_that_grew() {
    let stack =
        Stack::start_with(Stack::default_registry().env("REGISTRY_SQLITE_STATISTICS_SECONDS", "1"))
            .await;
    if stack.database.is_postgres() {
        stack.finish().await;
        return;
    }
    let mut c = clients_as(&stack, "acme").await;
    for i in 0..40 {
        create_agent(&mut c, &format!("agent-{i:02}"), &["search"], None).await;
    }
    // `sqlite_stat1` exists from the first analysis on; then it must come
    // to describe `agents` as grown.
    let exists = "SELECT COUNT(*) FROM sqlite_master WHERE name = 'sqlite_stat1'";
    let agents_rows = "SELECT COALESCE(MAX(CAST(stat AS INTEGER)), 0) FROM sqlite_stat1 \
                       WHERE tbl = 'agents'";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if stack.database.count(exists).await == 1 && stack.database.count(agents_rows).await >= 40
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no statistics of 40 agents within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every connection plans with them now, and answers the same.
    assert_eq!(
        selected(&mut c, r#"name = "agent-01*" OR tool:"search""#)
            .await
            .len(),
        40
    );
    stack.finish().await;
}
