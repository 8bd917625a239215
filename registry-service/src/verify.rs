//! `registry-service verify`: checks the database's invariants, for
//! operators after a crash or a restore and for the fault tests: every
//! resource's version rows are 1..N with no gap or duplicate (N its current
//! version), and its current configuration equals its newest snapshot.
//!
//! It also checks every hash chain (tamper evidence, `store::chain`): each
//! resource's version rows (and the head kept on its row), each resource's
//! label moves, and the sealed audit trail from its anchor (where retention
//! cut it) to its head, naming the first broken link of each. The chains'
//! current heads can be exported ([`Heads`], JSON) and kept elsewhere; a
//! later verify against them finds a chain whose tail was cut off (rows
//! deleted and the heads rewritten), which the database alone cannot show.

use std::collections::BTreeMap;

use sea_orm::sea_query::ExprTrait;
use sea_orm::{
    AccessMode, ConnectionTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait,
    FromQueryResult, IsolationLevel, QueryFilter, QueryOrder, QueryResult, QuerySelect,
    TransactionTrait,
};

mod chains;
use serde_json::Value;

use crate::error::Error;
use crate::model::Snapshot;
use crate::store::agents::Agents;
use crate::store::db_error;
use crate::store::providers::Providers;
use crate::store::versioned::{Kind, Read, vcol};

/// One broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// `agent <id>` or `provider <id>`.
    pub resource: String,
    /// What is wrong.
    pub problem: String,
}

/// Reads everything in pages of `page` rows, in one read-only snapshot,
/// and lists what is broken, checking the chains against `exported` heads
/// when given; answers how many resources it checked, the findings, and
/// the chains' current heads.
pub async fn verify(
    db: &DatabaseConnection,
    page: u64,
    exported: Option<&Heads>,
) -> Result<(u64, Vec<Finding>, Heads), Error> {
    let txn = match db.get_database_backend() {
        DbBackend::Postgres => db
            .begin_with_config(
                Some(IsolationLevel::RepeatableRead),
                Some(AccessMode::ReadOnly),
            )
            .await
            .map_err(db_error)?,
        _ => db.begin().await.map_err(db_error)?,
    };
    let mut findings = Vec::new();
    let agents = check::<Agents>(&txn, page, &mut findings).await?;
    let providers = check::<Providers>(&txn, page, &mut findings).await?;
    let heads = chains::verify(&txn, page, exported, &mut findings).await?;
    txn.commit().await.map_err(db_error)?;
    Ok((agents + providers, findings, heads))
}

pub use chains::Heads;

/// Checks every resource of kind `K`; answers how many there are.
async fn check<K: Kind>(
    db: &impl ConnectionTrait,
    page: u64,
    findings: &mut Vec<Finding>,
) -> Result<u64, Error> {
    let history = history::<K>(db, page).await?;
    let rows = K::Entity::find()
        .into_model::<Current<K>>()
        .all(db)
        .await
        .map_err(db_error)?;
    for row in &rows {
        let resource = format!("{} {}", K::NAMES.kind, row.id);
        let (numbers, newest) = history
            .get(&row.id)
            .map_or((&[][..], None), |(n, s)| (n.as_slice(), s.as_ref()));
        check_numbers(&resource, numbers, row.version, findings);
        let Some(snapshot) = newest else {
            continue;
        };
        match (&row.spec, K::Spec::from_json(snapshot)) {
            (Some(current), Ok(latest)) if *current == latest => {}
            (Some(_), Ok(_)) => findings.push(finding(
                &resource,
                "current configuration differs from the newest snapshot",
            )),
            _ => findings.push(finding(
                &resource,
                "configuration or snapshot is unreadable",
            )),
        }
    }
    Ok(u64::try_from(rows.len()).unwrap_or(u64::MAX))
}

/// A resource row: its version, and its spec when readable.
struct Current<K: Kind> {
    id: String,
    version: i64,
    spec: Option<K::Spec>,
}

impl<K: Kind> FromQueryResult for Current<K> {
    fn from_query_result(row: &QueryResult, pre: &str) -> Result<Self, DbErr> {
        Ok(Self {
            id: row.try_get(pre, "id")?,
            version: row.try_get(pre, "version")?,
            spec: Read::<K>::from_query_result(row, pre)
                .ok()
                .map(|read| read.0.spec),
        })
    }
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
type History = BTreeMap<String, (Vec<i64>, Option<Value>)>;

/// One version row, as the history reads it.
#[derive(Debug, FromQueryResult)]
struct Entry {
    row_id: i64,
    owner: String,
    version_number: i64,
    configuration: Value,
}

/// The history of every resource of kind `K`, read in pages by row id.
async fn history<K: Kind>(db: &impl ConnectionTrait, page: u64) -> Result<History, Error> {
    let mut history = History::new();
    let mut after = 0;
    loop {
        let rows = K::Versions::find()
            .select_only()
            .column_as(vcol::<K>("id"), "row_id")
            .column_as(vcol::<K>(K::NAMES.owner), "owner")
            .column_as(vcol::<K>("version_number"), "version_number")
            .column_as(vcol::<K>("configuration"), "configuration")
            .filter(vcol::<K>("id").gt(after))
            .order_by_asc(vcol::<K>("id"))
            .limit(page)
            .into_model::<Entry>()
            .all(db)
            .await
            .map_err(db_error)?;
        let Some(last) = rows.last() else {
            break;
        };
        after = last.row_id;
        for row in rows {
            record(
                &mut history,
                row.owner,
                row.version_number,
                row.configuration,
            );
        }
    }
    Ok(sorted(history))
}

/// Keeps the snapshot of the highest version number seen.
fn record(history: &mut History, id: String, number: i64, snapshot: Value) {
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
