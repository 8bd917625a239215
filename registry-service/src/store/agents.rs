//! Agents: the versioned kind [`Agents`] (its row keeps the name and the
//! assigned provider in columns of their own, the rest in `config`), and
//! the runtime's reads of an agent with its provider.

use migrations::entity::{agent, agent_version, provider};
use sea_orm::sea_query::{Expr, Query, SimpleExpr};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, DbErr, EntityTrait, QueryFilter,
    QueryResult,
};

use super::changes::ResourceKind;
use super::labels;
use super::providers::{ProviderRecord, Providers};
use super::recent::{Recent, Weigh};
use super::search::{self, Column, Field};
use super::versioned::{self, Clash, Kind, Names, Read, Record, Write};
use super::{Store, db_error, foreign_key_violation, unique_violation, val};
use crate::error::Error;
use crate::model::Snapshot;
use crate::model::agent::AgentSpec;

/// An agent as stored now.
pub type AgentRecord = Record<AgentSpec>;

/// The agent kind.
#[derive(Debug, Clone, Copy)]
pub struct Agents;

impl Kind for Agents {
    type Spec = AgentSpec;
    type Entity = agent::Entity;
    type Versions = agent_version::Entity;

    const NAMES: Names = Names::new("agent", "agent version", "agent_id");
    const LOGGED_AS: ResourceKind = ResourceKind::Agent;
    /// `provider` is the assigned provider's id (`""`: none, the tenant's
    /// default); `tool` is a side table the database keeps from
    /// `config.tools` in the same statement as every write of the row (a
    /// trigger, `m20261207_000002_search`); `label` is a label of the agent
    /// (`search::label`).
    const FILTER_FIELDS: &'static [Field] = &[
        search::NAME,
        Field::new("provider", Column::Reference("llm_provider_id")),
        Field::new(
            "tool",
            Column::Has {
                table: "agent_tools",
                owner: "agent_id",
                value: "tool",
                scope: None,
                implicit: None,
            },
        ),
        search::CREATE_TIME,
        search::UPDATE_TIME,
        search::label(Self::NAMES.kind),
        search::DELETED,
    ];

    fn name(spec: &AgentSpec) -> &str {
        &spec.name
    }

    /// `config` holds the whole snapshot (bound once for both rows).
    fn columns(
        spec: &AgentSpec,
        snapshot: &SimpleExpr,
        _backend: DbBackend,
    ) -> Result<Vec<(&'static str, SimpleExpr)>, Error> {
        Ok(vec![
            ("name", val(spec.name.clone())),
            ("llm_provider_id", val(spec.llm_provider_id.clone())),
            ("config", snapshot.clone()),
            // What the `agent_tools` triggers read (migration
            // `m20261208_000001_agent_tools_column`): a short string they
            // compare instead of parsing both configurations.
            ("tools", val(tools_column(&spec.tools)?)),
        ])
    }

    /// A name clash is ALREADY_EXISTS, a missing provider
    /// FAILED_PRECONDITION. A clash on the version index
    /// (`ux_agent_versions_agent_version`, or `agent_versions.…` in
    /// SQLite's message) is not the caller's doing and stays INTERNAL.
    fn clash(&self, error: DbErr, spec: &AgentSpec) -> Clash {
        let name_clash =
            unique_violation(&error).is_some_and(|message| !message.contains("agent_versions"));
        Clash::Fail(if name_clash {
            Error::AlreadyExists {
                kind: "agent",
                name: spec.name.clone(),
            }
        } else if foreign_key_violation(&error) {
            Error::precondition("PROVIDER_NOT_FOUND", "the assigned provider does not exist")
        } else {
            db_error(error)
        })
    }

    /// The provider the agent resolves to as the version is written — the
    /// assigned one, or the tenant's default — and that provider's
    /// version, read by the version row's insert itself.
    fn version_columns(tenant: &str, spec: &AgentSpec) -> Vec<(&'static str, SimpleExpr)> {
        let resolved = |column: provider::Column| {
            let mut query = Query::select();
            query
                .column(column)
                .from(provider::Entity)
                .and_where(provider::Column::TenantId.eq(tenant));
            match &spec.llm_provider_id {
                Some(id) => query.and_where(provider::Column::Id.eq(id.clone())),
                None => query
                    .and_where(provider::Column::IsDefault.eq(true))
                    .and_where(provider::Column::DeleteTime.is_null()),
            };
            SimpleExpr::SubQuery(None, Box::new(query.into()))
        };
        // An assigned provider's id is known: only its version is looked up
        // (the assignment's foreign key guarantees the row).
        let provider_id = match &spec.llm_provider_id {
            Some(id) => val(id.clone()),
            None => resolved(provider::Column::Id),
        };
        // A reference by label records the version the label names now; a
        // pinned version records itself.
        let provider_version = match (&spec.llm_provider_id, &spec.llm_provider_label) {
            (Some(id), Some(label)) => {
                let target = labels::target_query::<Providers>(tenant, id, label);
                SimpleExpr::SubQuery(None, Box::new(target.into()))
            }
            _ => match spec.llm_provider_version {
                Some(version) => val(version),
                None => resolved(provider::Column::Version),
            },
        };
        vec![
            ("provider_id", provider_id),
            ("provider_version", provider_version),
        ]
    }

    fn recent<'s>(&self, store: &'s Store) -> Option<&'s Recent<AgentSpec>> {
        Some(store.recent_agents())
    }

    /// A create checks its provider in the insert ([`Kind::insert_guard`]);
    /// an update that moves the agent to another provider checks it in the
    /// locking path. An unchanged assignment needs no check: it was checked
    /// when it was made, a provider is neither deleted nor purged while a
    /// live agent names it (its delete checks for live agents; an agent is
    /// undeleted only while its provider is live; the foreign key, ON
    /// DELETE RESTRICT, backs the purge), and a provider never changes
    /// tenant.
    ///
    /// A provider label is checked on every write that keeps it (a label
    /// can be deleted; a version cannot while its provider exists), and a
    /// new reference to a label or version when made: both in the locking
    /// path.
    fn fast(&self, current: Option<&AgentSpec>, new: &AgentSpec) -> bool {
        let same_reference = |current: &AgentSpec| {
            current.llm_provider_id == new.llm_provider_id
                && current.llm_provider_version == new.llm_provider_version
        };
        new.llm_provider_label.is_none()
            && match current {
                None => new.llm_provider_version.is_none(),
                Some(current) => same_reference(current),
            }
    }

    /// The assigned provider exists in the caller's tenant.
    fn insert_guard(&self, tenant: &str, spec: &AgentSpec) -> Option<(SimpleExpr, Error)> {
        let provider_id = spec.llm_provider_id.as_ref()?;
        // `FOR SHARE` (PostgreSQL; SQLite writes one at a time): a
        // concurrent soft delete of the provider, which holds its row `FOR
        // UPDATE`, is waited for and its outcome seen, so a new agent never
        // lands on a provider deleted meanwhile. The foreign key's check
        // takes a share lock on that row anyway.
        let exists = Expr::exists(
            Query::select()
                .expr(Expr::val(1))
                .from(provider::Entity)
                .and_where(provider::Column::Id.eq(provider_id.clone()))
                .and_where(provider::Column::TenantId.eq(tenant))
                .and_where(provider::Column::DeleteTime.is_null())
                .lock_shared()
                .to_owned(),
        );
        Some((exists, provider_not_found(provider_id)))
    }

    async fn prepare(
        &self,
        txn: &DatabaseTransaction,
        write: &Write<'_>,
        _id: &str,
        current: Option<&AgentSpec>,
        next: &mut AgentSpec,
        _description: &mut String,
    ) -> Result<bool, Error> {
        let moved = current.is_none_or(|c| {
            c.llm_provider_id != next.llm_provider_id
                || c.llm_provider_version != next.llm_provider_version
        }) || next.llm_provider_label.is_some();
        let Some(provider_id) = next.llm_provider_id.as_ref().filter(|_| moved) else {
            return Ok(true);
        };
        let tenant = &write.caller.tenant;
        // Locked, as a label move and the provider's delete lock it: the
        // label read here is the one the version row's subquery reads, and
        // the provider is not deleted under the agent.
        match versioned::get_locked::<Providers>(txn, tenant, provider_id).await {
            Ok(_) => {}
            Err(Error::NotFound { .. }) => return Err(provider_not_found(provider_id)),
            Err(other) => return Err(other),
        }
        if let Some(label) = &next.llm_provider_label
            && labels::label_of::<Providers>(txn, tenant, provider_id, label)
                .await?
                .is_none()
        {
            return Err(Error::precondition(
                "PROVIDER_LABEL_NOT_FOUND",
                format!("provider {provider_id:?} has no label {label:?}"),
            ));
        }
        if let Some(number) = next.llm_provider_version {
            match versioned::get_version::<Providers>(txn, tenant, provider_id, number).await {
                Ok(_) => {}
                Err(Error::NotFound { .. }) => {
                    return Err(Error::precondition(
                        "PROVIDER_VERSION_NOT_FOUND",
                        format!("provider {provider_id:?} has no version {number}"),
                    ));
                }
                Err(other) => return Err(other),
            }
        }
        Ok(true)
    }

    /// A live agent's provider is live: an agent is undeleted only while
    /// the provider it names is (locked, so a concurrent delete of the
    /// provider, which checks for live agents, waits for this answer).
    async fn guard_undelete(
        txn: &DatabaseTransaction,
        tenant: &str,
        spec: &AgentSpec,
    ) -> Result<(), Error> {
        let Some(provider_id) = &spec.llm_provider_id else {
            return Ok(());
        };
        match versioned::get_locked::<Providers>(txn, tenant, provider_id).await {
            Ok(_) => Ok(()),
            Err(Error::NotFound { .. }) => Err(Error::precondition(
                "PROVIDER_NOT_FOUND",
                format!(
                    "the agent's provider {provider_id:?} is deleted: undelete the provider \
                     first"
                ),
            )),
            Err(other) => Err(other),
        }
    }
}

impl Weigh for AgentSpec {
    fn heap_bytes(&self) -> usize {
        let strings = [&self.name, &self.role, &self.goal, &self.backstory];
        let params = &self.llm_overrides;
        strings.iter().map(|s| s.len()).sum::<usize>()
            + self.tools.iter().map(|t| t.len() + 24).sum::<usize>()
            + self.llm_provider_id.as_ref().map_or(0, String::len)
            + self.llm_provider_label.as_ref().map_or(0, String::len)
            + params.model_name.as_ref().map_or(0, String::len)
            + params.stop.iter().map(|s| s.len() + 24).sum::<usize>()
            + self.crewai_settings_bytes()
    }
}

/// The agent `id` of `tenant`.
pub async fn get(db: &impl ConnectionTrait, tenant: &str, id: &str) -> Result<AgentRecord, Error> {
    versioned::get::<Agents>(db, tenant, id).await
}

/// The agent `id` of `tenant` and its assigned provider, in one query
/// (`None` when it has no provider: the caller falls back to the tenant's
/// default).
pub async fn get_with_provider(
    db: &impl ConnectionTrait,
    tenant: &str,
    id: &str,
) -> Result<(AgentRecord, Option<ProviderRecord>), Error> {
    let (Read(agent), provider) = agent::Entity::find_by_id(id.to_owned())
        .filter(agent::Column::TenantId.eq(tenant))
        .filter(agent::Column::DeleteTime.is_null())
        .find_also_related(provider::Entity)
        .into_model::<Read<Agents>, ProviderRow>()
        .all(db)
        .await
        .map_err(db_error)?
        .into_iter()
        .next()
        .ok_or_else(|| versioned::not_found::<Agents>(id))?;
    // Assignments are checked against the tenant when made; this keeps a
    // foreign row out even so.
    // A deleted provider is none (the caller answers PROVIDER_NOT_FOUND).
    let provider = provider
        .filter(|p| p.tenant_id == tenant)
        .map(|p| p.read.0)
        .filter(|p| p.delete_time.is_none());
    Ok((agent, provider))
}

/// A provider row as the runtime's join reads it: the record and its tenant.
struct ProviderRow {
    tenant_id: String,
    read: Read<Providers>,
}

impl sea_orm::FromQueryResult for ProviderRow {
    fn from_query_result(row: &QueryResult, pre: &str) -> Result<Self, DbErr> {
        Ok(Self {
            tenant_id: row.try_get(pre, "tenant_id")?,
            read: Read::from_query_result(row, pre)?,
        })
    }

    /// No provider joined (the agent has none): `None`; an unreadable one
    /// is an error, not "no provider".
    fn from_query_result_optional(row: &QueryResult, pre: &str) -> Result<Option<Self>, DbErr> {
        match row.try_get::<Option<String>>(pre, "id")? {
            Some(_) => Self::from_query_result(row, pre).map(Some),
            None => Ok(None),
        }
    }
}

/// The provider an agent version ran on: its id and the version it had
/// when the agent version was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderAt {
    pub id: String,
    pub version: i64,
}

/// Used by the runtime: the agent snapshot at `number`, with the current
/// record and the provider that version was written against (`None` for
/// versions written before that was recorded, or without a provider).
pub async fn spec_at(
    db: &impl ConnectionTrait,
    tenant: &str,
    id: &str,
    number: i64,
) -> Result<(AgentRecord, AgentSpec, Option<ProviderAt>), Error> {
    let current = get(db, tenant, id).await?;
    let version = versioned::get_version::<Agents>(db, tenant, id, number).await?;
    let spec = AgentSpec::from_json(&version.configuration)?;
    let recorded = agent_version::Entity::find()
        .filter(agent_version::Column::AgentId.eq(id))
        .filter(agent_version::Column::TenantId.eq(tenant))
        .filter(agent_version::Column::VersionNumber.eq(number))
        .all(db)
        .await
        .map_err(db_error)?
        .into_iter()
        .next()
        .and_then(|row| match (row.provider_id, row.provider_version) {
            (Some(id), Some(version)) => Some(ProviderAt { id, version }),
            _ => None,
        });
    Ok((current, spec, recorded))
}

fn provider_not_found(provider_id: &str) -> Error {
    Error::precondition(
        "PROVIDER_NOT_FOUND",
        format!("provider {provider_id:?} does not exist in this tenant"),
    )
}

/// `agents.tools`: the tool names as a JSON array, as the triggers that
/// keep `agent_tools` read them.
fn tools_column(tools: &[String]) -> Result<String, Error> {
    serde_json::to_string(tools).map_err(|e| Error::Internal(format!("agent tools: {e}")))
}
