//! `agents.tools`: the agent's tool names as a JSON array, written by the
//! registry beside `config`, so that the triggers keeping `agent_tools`
//! (see `m20261207_000002_search`) decide whether the tools changed by
//! comparing two short strings instead of parsing the old and the new
//! configuration on every update (two JSON parses of the whole
//! configuration per UpdateAgent on SQLite: the largest part of what the
//! search feature added to a write; BENCHMARKS.md, "the features' write
//! cost").
//!
//! The triggers now read the tools from `tools`, never from `config`. The
//! registry writes both from one spec in one statement, so they cannot
//! disagree; an update that leaves `tools` out (one whose tools did not
//! change: it sets only the columns that moved) leaves `agent_tools` as it
//! was, never wrong for another agent. The old rows'
//! `tools` are filled from their configuration when the migration runs.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

/// Adds `agents.tools` and moves the `agent_tools` triggers onto it.
#[derive(Debug, DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Agents {
    Table,
    Tools,
}

/// SQLite: an agent's tools, from its `tools` column (also used by
/// `bench filter`, which measures their cost by dropping them).
pub const SQLITE_TRIGGERS: [&str; 2] = [
    r"CREATE TRIGGER tr_agents_tools_insert AFTER INSERT ON agents
BEGIN
  INSERT OR IGNORE INTO agent_tools (agent_id, tenant_id, tool)
    SELECT NEW.id, NEW.tenant_id, tool.value
    FROM json_each(NEW.tools) AS tool WHERE tool.type = 'text';
END",
    r"CREATE TRIGGER tr_agents_tools_update AFTER UPDATE OF tools ON agents
WHEN OLD.tools IS NOT NEW.tools
BEGIN
  DELETE FROM agent_tools WHERE agent_id = OLD.id;
  INSERT OR IGNORE INTO agent_tools (agent_id, tenant_id, tool)
    SELECT NEW.id, NEW.tenant_id, tool.value
    FROM json_each(NEW.tools) AS tool WHERE tool.type = 'text';
END",
];

/// PostgreSQL: one function; the update trigger's `WHEN` keeps it from
/// being called at all when the tools stay.
const POSTGRES_FUNCTION: &str = r"CREATE OR REPLACE FUNCTION agent_tools_sync() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'UPDATE' THEN
    DELETE FROM agent_tools WHERE agent_id = OLD.id;
  END IF;
  INSERT INTO agent_tools (agent_id, tenant_id, tool)
    SELECT NEW.id, NEW.tenant_id, tool
    FROM jsonb_array_elements_text(NEW.tools::jsonb) AS tool
    ON CONFLICT DO NOTHING;
  RETURN NULL;
END
$$";

/// PostgreSQL: the two triggers (also used by `bench filter`).
pub const POSTGRES_TRIGGERS: [&str; 2] = [
    r"CREATE TRIGGER tr_agents_tools AFTER INSERT ON agents
FOR EACH ROW EXECUTE FUNCTION agent_tools_sync()",
    r"CREATE TRIGGER tr_agents_tools_update AFTER UPDATE OF tools ON agents
FOR EACH ROW WHEN (OLD.tools IS DISTINCT FROM NEW.tools)
EXECUTE FUNCTION agent_tools_sync()",
];

/// The old rows' tools, from their configuration (a list of strings, as
/// the registry validates it; anything else is no tools).
const SQLITE_BACKFILL: &str = r"UPDATE agents SET tools = json_extract(config, '$.tools')
  WHERE json_type(config, '$.tools') = 'array'";
/// PostgreSQL writes jsonb as text with spaces; `array_to_json` writes it
/// compact, as the registry does (a difference would only cost one rewrite
/// of the agent's tools at its next update).
const POSTGRES_BACKFILL: &str = r"UPDATE agents
  SET tools = array_to_json(ARRAY(SELECT jsonb_array_elements_text(config -> 'tools')))::text
  WHERE jsonb_typeof(config -> 'tools') = 'array'";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let backend = manager.get_database_backend();
        match backend {
            DbBackend::Postgres => {
                db.execute_unprepared("DROP TRIGGER tr_agents_tools ON agents")
                    .await?;
            }
            _ => {
                for trigger in ["tr_agents_tools_insert", "tr_agents_tools_update"] {
                    db.execute_unprepared(&format!("DROP TRIGGER {trigger}"))
                        .await?;
                }
            }
        }
        manager
            .alter_table(
                Table::alter()
                    .table(Agents::Table)
                    .add_column(
                        ColumnDef::new(Agents::Tools)
                            .text()
                            .not_null()
                            .default("[]"),
                    )
                    .take(),
            )
            .await?;
        match backend {
            DbBackend::Postgres => {
                db.execute_unprepared(POSTGRES_BACKFILL).await?;
                db.execute_unprepared(POSTGRES_FUNCTION).await?;
                for trigger in POSTGRES_TRIGGERS {
                    db.execute_unprepared(trigger).await?;
                }
            }
            _ => {
                db.execute_unprepared(SQLITE_BACKFILL).await?;
                for trigger in SQLITE_TRIGGERS {
                    db.execute_unprepared(trigger).await?;
                }
            }
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let backend = manager.get_database_backend();
        let (drops, restore): (&[&str], Vec<&str>) = match backend {
            DbBackend::Postgres => (
                &[
                    "DROP TRIGGER tr_agents_tools ON agents",
                    "DROP TRIGGER tr_agents_tools_update ON agents",
                ],
                vec![
                    super::m20261207_000002_search::POSTGRES_FUNCTION,
                    super::m20261207_000002_search::POSTGRES_TRIGGER,
                ],
            ),
            _ => (
                &[
                    "DROP TRIGGER tr_agents_tools_insert",
                    "DROP TRIGGER tr_agents_tools_update",
                ],
                super::m20261207_000002_search::SQLITE_TRIGGERS.to_vec(),
            ),
        };
        for statement in drops {
            db.execute_unprepared(statement).await?;
        }
        manager
            .alter_table(
                Table::alter()
                    .table(Agents::Table)
                    .drop_column(Agents::Tools)
                    .take(),
            )
            .await?;
        for statement in restore {
            // The old function is replaced, not created anew.
            let statement = statement.replacen("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1);
            db.execute_unprepared(&statement).await?;
        }
        Ok(())
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
