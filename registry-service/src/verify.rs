//! `registry-service verify`: checks the database's invariants, for
//! operators after a crash or a restore and for the fault tests: every
//! resource's version rows are 1..N with no gap or duplicate (N its current
//! version), and its current configuration equals its newest snapshot.

use std::collections::BTreeMap;

use migrations::entity::{agent, agent_version, provider, provider_version};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use crate::error::Error;
use crate::model::agent::AgentSpec;
use crate::model::provider::ProviderSpec;
use crate::store::db_error;

/// One broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// `agent <id>` or `provider <id>`.
    pub resource: String,
    /// What is wrong.
    pub problem: String,
}

/// Reads everything in pages of `page` rows and lists what is broken.
pub async fn verify(db: &DatabaseConnection, page: u64) -> Result<(u64, Vec<Finding>), Error> {
    let mut findings = Vec::new();
    let agent_versions = version_numbers_of_agents(db, page).await?;
    let provider_versions = version_numbers_of_providers(db, page).await?;
    let mut checked = 0;

    let agents = agent::Entity::find().all(db).await.map_err(db_error)?;
    for row in agents {
        checked += 1;
        let resource = format!("agent {}", row.id);
        let numbers = agent_versions
            .get(&row.id)
            .map(|(n, _)| n.as_slice())
            .unwrap_or(&[]);
        check_numbers(&resource, numbers, row.version, &mut findings);
        if let Some((_, newest)) = agent_versions.get(&row.id)
            && let Some(snapshot) = newest
        {
            match (
                AgentSpec::from_json(&row.config),
                AgentSpec::from_json(snapshot),
            ) {
                (Ok(current), Ok(latest)) if current == latest => {}
                (Ok(_), Ok(_)) => findings.push(finding(
                    &resource,
                    "current configuration differs from the newest snapshot",
                )),
                _ => findings.push(finding(
                    &resource,
                    "configuration or snapshot is unreadable",
                )),
            }
        }
    }
    let providers = provider::Entity::find().all(db).await.map_err(db_error)?;
    for row in providers {
        checked += 1;
        let resource = format!("provider {}", row.id);
        let version = row.version;
        let id = row.id.clone();
        let numbers = provider_versions
            .get(&id)
            .map(|(n, _)| n.as_slice())
            .unwrap_or(&[]);
        check_numbers(&resource, numbers, version, &mut findings);
        let current = provider_spec(&row);
        if let Some((_, Some(snapshot))) = provider_versions.get(&id) {
            match (
                current,
                crate::model::provider::ProviderSpec::from_json(snapshot),
            ) {
                (Ok(current), Ok(latest)) if current == latest => {}
                (Ok(_), Ok(_)) => findings.push(finding(
                    &resource,
                    "current configuration differs from the newest snapshot",
                )),
                _ => findings.push(finding(
                    &resource,
                    "configuration or snapshot is unreadable",
                )),
            }
        }
    }
    Ok((checked, findings))
}

fn finding(resource: &str, problem: impl Into<String>) -> Finding {
    Finding {
        resource: resource.to_owned(),
        problem: problem.into(),
    }
}

/// Version numbers must be exactly 1..=current.
fn check_numbers(resource: &str, numbers: &[i64], current: i64, findings: &mut Vec<Finding>) {
    let expected: Vec<i64> = (1..=current).collect();
    if numbers != expected.as_slice() {
        let missing: Vec<i64> = expected
            .iter()
            .filter(|n| !numbers.contains(n))
            .copied()
            .collect();
        let extra: Vec<i64> = numbers
            .iter()
            .filter(|n| !expected.contains(n))
            .copied()
            .collect();
        let mut duplicated: Vec<i64> = numbers
            .windows(2)
            .filter(|w| w[0] == w[1])
            .map(|w| w[0])
            .collect();
        duplicated.dedup();
        findings.push(finding(
            resource,
            format!(
                "version rows are not 1..{current}: missing {missing:?}, unexpected {extra:?}, duplicated {duplicated:?}"
            ),
        ));
    }
}

/// Per resource: its version numbers ascending, and the newest snapshot.
type History = BTreeMap<String, (Vec<i64>, Option<serde_json::Value>)>;

async fn version_numbers_of_agents(db: &DatabaseConnection, page: u64) -> Result<History, Error> {
    let mut history = History::new();
    let mut after = 0;
    loop {
        let rows = agent_version::Entity::find()
            .filter(agent_version::Column::Id.gt(after))
            .order_by_asc(agent_version::Column::Id)
            .limit(page)
            .all(db)
            .await
            .map_err(db_error)?;
        let Some(last) = rows.last() else {
            break;
        };
        after = last.id;
        for row in rows {
            record(
                &mut history,
                row.agent_id,
                row.version_number,
                row.configuration,
            );
        }
    }
    Ok(sorted(history))
}

async fn version_numbers_of_providers(
    db: &DatabaseConnection,
    page: u64,
) -> Result<History, Error> {
    let mut history = History::new();
    let mut after = 0;
    loop {
        let rows = provider_version::Entity::find()
            .filter(provider_version::Column::Id.gt(after))
            .order_by_asc(provider_version::Column::Id)
            .limit(page)
            .all(db)
            .await
            .map_err(db_error)?;
        let Some(last) = rows.last() else {
            break;
        };
        after = last.id;
        for row in rows {
            record(
                &mut history,
                row.provider_id,
                row.version_number,
                row.configuration,
            );
        }
    }
    Ok(sorted(history))
}

/// Keeps the snapshot of the highest version number seen.
fn record(history: &mut History, id: String, number: i64, snapshot: serde_json::Value) {
    let entry = history.entry(id).or_insert_with(|| (Vec::new(), None));
    if entry.0.iter().all(|n| *n < number) {
        entry.1 = Some(snapshot);
    }
    entry.0.push(number);
}

fn sorted(mut history: History) -> History {
    for (numbers, _) in history.values_mut() {
        numbers.sort_unstable();
    }
    history
}

/// The spec a provider row holds (its columns are authoritative; `config`
/// holds the rest).
fn provider_spec(row: &provider::Model) -> Result<ProviderSpec, Error> {
    let mut spec = ProviderSpec::from_json(&row.config)?;
    spec.name = row.name.clone();
    spec.is_default = row.is_default;
    spec.api_key = row.api_key_ciphertext.clone();
    Ok(spec)
}
