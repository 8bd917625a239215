//! The hash chains `verify` walks: each resource's version rows (kind by
//! kind), each resource's label moves, and the sealed audit trail. Each is
//! read in keyset pages in chain order; the first link whose stored hash
//! is not the hash of its content after its predecessor's is named, and the
//! rest of that chain is skipped. Rows from before the chains (a NULL hash)
//! may only precede a chain's first hashed link.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Alias, Expr, ExprTrait, Order, Query, SelectStatement};
use sea_orm::{ConnectionTrait, EntityName, FromQueryResult};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Finding, finding};
use crate::error::Error;
use crate::store::agents::Agents;
use crate::store::audit::{self, EventRecord};
use crate::store::db_error;
use crate::store::labels::{MoveRecord, move_link};
use crate::store::providers::Providers;
use crate::store::versioned::{Hashed, Kind};

/// The heads of every chain, as `verify --export-heads` prints them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heads {
    /// The audit trail's last sealed position and hash.
    pub audit: AuditHead,
    /// One per resource with hashed versions and per resource with hashed
    /// label moves.
    pub chains: Vec<ChainHead>,
}

/// The audit chain's head.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditHead {
    pub seq: i64,
    pub hash: String,
}

/// The last link of one chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainHead {
    /// `agent_versions`, `provider_versions` or `label_moves`.
    pub table: String,
    pub tenant: String,
    /// `agent <id>` or `provider <id>`.
    pub resource: String,
    /// The version number, or the label move's id.
    pub position: i64,
    pub hash: String,
}

/// Walks every chain; answers the current heads.
pub async fn verify(
    db: &impl ConnectionTrait,
    page: u64,
    exported: Option<&Heads>,
    findings: &mut Vec<Finding>,
) -> Result<Heads, Error> {
    let expected: HashMap<(String, String), (i64, String)> = exported
        .map(|heads| {
            heads
                .chains
                .iter()
                .map(|h| {
                    (
                        (h.table.clone(), h.resource.clone()),
                        (h.position, h.hash.clone()),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let mut walk = Walk::new(&expected);
    versions::<Agents>(db, page, &mut walk, findings).await?;
    versions::<Providers>(db, page, &mut walk, findings).await?;
    label_moves(db, page, &mut walk, findings).await?;
    let audit = audit_trail(db, page, exported.map(|h| &h.audit), findings).await?;
    for ((table, resource), (position, _)) in &expected {
        if walk.seen.contains(&(table.clone(), resource.clone())) {
            continue;
        }
        if deleted(db, resource).await? {
            continue;
        }
        findings.push(finding(
            &format!("{table} {resource} position {position}"),
            "an exported chain head is missing: the chain was cut short",
        ));
    }
    Ok(Heads {
        audit,
        chains: walk.heads,
    })
}

/// Walking one chain after another, in chain order.
struct Walk<'e> {
    /// The chain being walked: (table, tenant, resource).
    current: Option<(&'static str, String, String)>,
    /// The last hashed link's position and hash.
    last: Option<(i64, String)>,
    /// Whether a link of the current chain was found broken.
    broken: bool,
    expected: &'e HashMap<(String, String), (i64, String)>,
    /// The exported heads found, by (table, resource).
    seen: HashSet<(String, String)>,
    /// The heads of the chains walked.
    heads: Vec<ChainHead>,
    /// Each finished version chain's last hash, by (table, resource id).
    ends: BTreeMap<(&'static str, String), String>,
}

/// One link as read.
struct Step<'a> {
    table: &'static str,
    tenant: &'a str,
    resource: &'a str,
    position: i64,
    stored: Option<&'a str>,
}

impl<'e> Walk<'e> {
    fn new(expected: &'e HashMap<(String, String), (i64, String)>) -> Self {
        Self {
            current: None,
            last: None,
            broken: false,
            expected,
            seen: HashSet::new(),
            heads: Vec::new(),
            ends: BTreeMap::new(),
        }
    }

    /// Checks one link; `hash_after` computes its hash from the previous.
    fn step(
        &mut self,
        step: &Step<'_>,
        hash_after: impl FnOnce(&str) -> String,
        findings: &mut Vec<Finding>,
    ) {
        let same = self
            .current
            .as_ref()
            .is_some_and(|(table, _, resource)| *table == step.table && resource == step.resource);
        if !same {
            self.finish();
            self.current = Some((step.table, step.tenant.to_owned(), step.resource.to_owned()));
        }
        let name = || {
            format!(
                "{} tenant {} {} position {}",
                step.table, step.tenant, step.resource, step.position
            )
        };
        let key = (step.table.to_owned(), step.resource.to_owned());
        if let Some((position, hash)) = self.expected.get(&key)
            && *position == step.position
        {
            self.seen.insert(key);
            if step.stored != Some(hash.as_str()) {
                findings.push(finding(
                    &name(),
                    "differs from the exported chain head: the chain was rewritten",
                ));
            }
        }
        if self.broken {
            return;
        }
        let Some(stored) = step.stored else {
            if self.last.is_some() {
                self.broken = true;
                findings.push(finding(
                    &name(),
                    "the first broken link: no hash after hashed links",
                ));
            }
            return;
        };
        let prev = self.last.as_ref().map_or("", |(_, hash)| hash.as_str());
        if hash_after(prev) != stored {
            self.broken = true;
            findings.push(finding(
                &name(),
                "the first broken link: its hash does not match its content and predecessor",
            ));
            return;
        }
        self.last = Some((step.position, stored.to_owned()));
    }

    /// Ends the current chain: its head, unless it is broken.
    fn finish(&mut self) {
        let Some((table, tenant, resource)) = self.current.take() else {
            return;
        };
        if let Some((position, hash)) = self.last.take()
            && !std::mem::take(&mut self.broken)
        {
            self.ends.insert((table, resource.clone()), hash.clone());
            self.heads.push(ChainHead {
                table: table.to_owned(),
                tenant,
                resource,
                position,
                hash,
            });
        }
        self.broken = false;
    }
}

/// A version row as its chain reads it.
#[derive(Debug, FromQueryResult)]
struct VersionLink {
    owner: String,
    tenant_id: String,
    version_number: i64,
    action: String,
    configuration: Value,
    diff: Value,
    change_description: String,
    changed_by: String,
    create_time: DateTime<Utc>,
    request_id: Option<String>,
    hash: Option<String>,
}

/// The version chains of kind `K`, and the head on each resource's row.
async fn versions<K: Kind>(
    db: &impl ConnectionTrait,
    page: u64,
    walk: &mut Walk<'_>,
    findings: &mut Vec<Finding>,
) -> Result<(), Error> {
    let table = K::Versions::default().table_name();
    let mut after: Option<(String, i64)> = None;
    loop {
        let mut query = Query::select();
        query
            .expr_as(Expr::col(Alias::new(K::NAMES.owner)), Alias::new("owner"))
            .columns(
                [
                    "tenant_id",
                    "version_number",
                    "action",
                    "configuration",
                    "diff",
                    "change_description",
                    "changed_by",
                    "create_time",
                    "request_id",
                    "hash",
                ]
                .map(Alias::new),
            )
            .from(K::Versions::default())
            .order_by(Alias::new(K::NAMES.owner), Order::Asc)
            .order_by(Alias::new("version_number"), Order::Asc)
            .limit(page);
        if let Some((owner, number)) = &after {
            let owner_col = || Expr::col(Alias::new(K::NAMES.owner));
            query.and_where(
                owner_col().gt(owner.clone()).or(owner_col()
                    .eq(owner.clone())
                    .and(Expr::col(Alias::new("version_number")).gt(*number))),
            );
        }
        let rows = read_all::<VersionLink>(db, &query).await?;
        let Some(last) = rows.last() else {
            break;
        };
        after = Some((last.owner.clone(), last.version_number));
        for row in &rows {
            let resource = format!("{} {}", K::NAMES.kind, row.owner);
            let step = Step {
                table,
                tenant: &row.tenant_id,
                resource: &resource,
                position: row.version_number,
                stored: row.hash.as_deref(),
            };
            let hashed = Hashed {
                kind: K::NAMES.kind,
                tenant: &row.tenant_id,
                id: &row.owner,
                number: row.version_number,
                action: &row.action,
                configuration: &row.configuration,
                diff: &row.diff,
                description: &row.change_description,
                changed_by: &row.changed_by,
                time: row.create_time,
                request_id: row.request_id.as_deref(),
            };
            walk.step(&step, |prev| hashed.hash_after(prev), findings);
        }
    }
    walk.finish();
    // The head on each resource's row is its newest version's hash.
    #[derive(FromQueryResult)]
    struct Head {
        id: String,
        tenant_id: String,
        version_hash: Option<String>,
    }
    let query = Query::select()
        .columns(["id", "tenant_id", "version_hash"].map(Alias::new))
        .from(K::Entity::default())
        .and_where(Expr::col(Alias::new("version_hash")).is_not_null())
        .to_owned();
    for head in read_all::<Head>(db, &query).await? {
        let resource = format!("{} {}", K::NAMES.kind, head.id);
        let end = walk.ends.get(&(table, resource.clone()));
        if end != head.version_hash.as_ref()
            && (end.is_some() || !broken_before(findings, &resource))
        {
            findings.push(finding(
                &format!("{table} tenant {} {resource}", head.tenant_id),
                "the head on its row is not its newest version's hash",
            ));
        }
    }
    Ok(())
}

/// Whether a finding already names a broken link of `resource`'s chain.
fn broken_before(findings: &[Finding], resource: &str) -> bool {
    findings
        .iter()
        .any(|f| f.resource.contains(&format!(" {resource} position ")))
}

/// A label move as its chain reads it.
#[derive(Debug, FromQueryResult)]
struct MoveLink {
    id: i64,
    tenant_id: String,
    kind: String,
    resource_id: String,
    label: String,
    from_version: i64,
    to_version: i64,
    actor: String,
    move_time: DateTime<Utc>,
    reason: String,
    hash: Option<String>,
}

/// Each resource's label moves, in id order.
async fn label_moves(
    db: &impl ConnectionTrait,
    page: u64,
    walk: &mut Walk<'_>,
    findings: &mut Vec<Finding>,
) -> Result<(), Error> {
    let mut after: Option<(String, String, i64)> = None;
    loop {
        let mut query = Query::select();
        query
            .columns(
                [
                    "id",
                    "tenant_id",
                    "kind",
                    "resource_id",
                    "label",
                    "from_version",
                    "to_version",
                    "actor",
                    "move_time",
                    "reason",
                    "hash",
                ]
                .map(Alias::new),
            )
            .from(Alias::new("label_moves"))
            .order_by(Alias::new("kind"), Order::Asc)
            .order_by(Alias::new("resource_id"), Order::Asc)
            .order_by(Alias::new("id"), Order::Asc)
            .limit(page);
        if let Some(after) = &after {
            query.and_where(after_move(after));
        }
        let rows = read_all::<MoveLink>(db, &query).await?;
        let Some(last) = rows.last() else {
            break;
        };
        after = Some((last.kind.clone(), last.resource_id.clone(), last.id));
        for row in &rows {
            let resource = format!("{} {}", row.kind, row.resource_id);
            let step = Step {
                table: "label_moves",
                tenant: &row.tenant_id,
                resource: &resource,
                position: row.id,
                stored: row.hash.as_deref(),
            };
            let moved = MoveRecord {
                id: row.id,
                label: row.label.clone(),
                from_version: row.from_version,
                to_version: row.to_version,
                actor: row.actor.clone(),
                move_time: row.move_time,
                reason: row.reason.clone(),
            };
            let link = move_link(&row.tenant_id, &row.kind, &row.resource_id, &moved);
            walk.step(&step, |prev| link.hash_after(prev), findings);
        }
    }
    walk.finish();
    Ok(())
}

/// Label moves after `(kind, resource_id, id)` in chain order.
fn after_move((kind, resource, id): &(String, String, i64)) -> sea_orm::sea_query::SimpleExpr {
    let col = |name: &str| Expr::col(Alias::new(name));
    col("kind")
        .gt(kind.clone())
        .or(col("kind").eq(kind.clone()).and(
            col("resource_id")
                .gt(resource.clone())
                .or(col("resource_id")
                    .eq(resource.clone())
                    .and(col("id").gt(*id))),
        ))
}

/// The sealed audit trail from its anchor to its head; answers the head.
async fn audit_trail(
    db: &impl ConnectionTrait,
    page: u64,
    exported: Option<&AuditHead>,
    findings: &mut Vec<Finding>,
) -> Result<AuditHead, Error> {
    let anchor = audit::anchor(db).await?;
    let head = audit::head(db).await?;
    let (mut seq, mut prev) = (anchor.seq, anchor.hash.clone());
    let name = |event: &EventRecord, seq: i64| {
        format!(
            "audit_events tenant {} event {} position {seq}",
            event.tenant_id, event.id
        )
    };
    let mut broken = false;
    'pages: loop {
        let events = audit::sealed_after(db, seq, page).await?;
        if events.is_empty() {
            break;
        }
        for event in &events {
            let position = event.chain_seq.unwrap_or_default();
            if position != seq + 1 {
                findings.push(finding(
                    &name(event, position),
                    format!(
                        "the first broken link: positions {}..{} are missing",
                        seq + 1,
                        position - 1
                    ),
                ));
                broken = true;
                break 'pages;
            }
            if event.hash.as_deref() != Some(event.link(position).hash_after(&prev).as_str()) {
                findings.push(finding(
                    &name(event, position),
                    "the first broken link: its hash does not match its content and predecessor",
                ));
                broken = true;
                break 'pages;
            }
            seq = position;
            prev = event.hash.clone().unwrap_or_default();
        }
    }
    if !broken && (seq, prev.as_str()) != (head.seq, head.hash.as_str()) {
        findings.push(finding(
            &format!("audit_seals head position {}", head.seq),
            format!("the audit chain ends at position {seq}, not at its recorded head"),
        ));
    }
    if let Some(exported) = exported {
        let kept = match exported.seq {
            0 => true,
            n if n < anchor.seq => true,
            n if n == anchor.seq => anchor.hash == exported.hash,
            n => audit::sealed_after(db, n - 1, 1)
                .await?
                .first()
                .is_some_and(|e| {
                    e.chain_seq == Some(n) && e.hash.as_deref() == Some(&exported.hash)
                }),
        };
        if !kept {
            findings.push(finding(
                &format!("audit_events position {}", exported.seq),
                "the exported audit chain head is missing or differs: the trail was cut short or rewritten",
            ));
        }
    }
    Ok(AuditHead {
        seq: head.seq,
        hash: head.hash,
    })
}

/// Whether `resource` (`agent <id>`) was deleted or purged, as its audit
/// trail records: its chains went with it.
async fn deleted(db: &impl ConnectionTrait, resource: &str) -> Result<bool, Error> {
    let Some((kind, id)) = resource.split_once(' ') else {
        return Ok(false);
    };
    let query = Query::select()
        .expr(Expr::val(1))
        .from(Alias::new("audit_events"))
        .and_where(Expr::col(Alias::new("resource")).eq(format!("{kind}s/{id}")))
        .and_where(Expr::col(Alias::new("action")).is_in(["DELETE", "PURGE"]))
        .to_owned();
    Ok(!db.query_all(&query).await.map_err(db_error)?.is_empty())
}

/// Every row `query` selects, read as `T`.
async fn read_all<T: FromQueryResult>(
    db: &impl ConnectionTrait,
    query: &SelectStatement,
) -> Result<Vec<T>, Error> {
    let rows = db.query_all(query).await.map_err(db_error)?;
    rows.iter()
        .map(|row| T::from_query_result(row, ""))
        .collect::<Result<_, _>>()
        .map_err(db_error)
}
