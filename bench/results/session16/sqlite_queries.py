"""SQLite's own cost of the registry's list queries, on a copy of a seeded
`bench filter` database (100,000 agents of tenant `bench`, and the audit
events their writes left), through APSW (SQLite 3.51.3, as bundled by the
registry's libsqlite3-sys):

    python3 sqlite_queries.py /path/to/copy-of-registry.db

The queries are the registry's, as it builds them (values bound). Each is
run 40 times, round-robin with the others, and the median of the last 35
is printed with its instruction count (SQLite's progress handler, every
1,000 virtual machine instructions) and its plan. Two variants that were
measured and not adopted run beside the registry's queries: the page
sorting only the matches' ids, and the count through a live-agent index
that also holds `delete_time` (built in a second copy, made here).
"""

import shutil
import statistics
import sys
import time

import apsw

ROUNDS, WARM = 40, 5
COLS = ", ".join(
    f'"agents"."{c}"'
    for c in "id tenant_id name llm_provider_id config tools version create_time "
    "update_time created_by updated_by delete_time version_hash".split()
)
WHERE = (
    '"agents"."tenant_id" = ? AND "agents"."delete_time" IS NULL AND ("agents"."id" IN '
    '(SELECT "labels"."resource_id" FROM "labels" WHERE "labels"."tenant_id" = ? AND '
    '("labels"."kind" = ? AND "labels"."label" = ?)) AND EXISTS(SELECT 1 FROM "agent_tools" '
    'WHERE "agent_tools"."agent_id" = "agents"."id" AND "agent_tools"."tool" = ?))'
)
ORDER = 'ORDER BY "agents"."update_time" DESC, "agents"."id" DESC'
LABEL_AND_TOOL = ("bench", "bench", "agent", "production", "search")
EVENT_COLS = ", ".join(
    f'"audit_events"."{c}"'
    for c in "id tenant_id event_time actor action kind resource request_id details "
    "chain_seq hash".split()
)
WINDOW_IDS = (
    'SELECT "audit_events"."id" AS "window_id" FROM "audit_events" '
    'WHERE "audit_events"."tenant_id" = ? ORDER BY "audit_events"."id" DESC LIMIT 2000'
)

QUERIES = {
    "label AND tool: page": (
        f'SELECT {COLS} FROM "agents" WHERE {WHERE} {ORDER} LIMIT 11',
        LABEL_AND_TOOL,
    ),
    "label AND tool: page, ids sorted first (not adopted)": (
        f'SELECT {COLS} FROM "agents" WHERE "agents"."id" IN (SELECT "agents"."id" FROM "agents" '
        f"WHERE {WHERE} {ORDER} LIMIT 11) {ORDER}",
        LABEL_AND_TOOL,
    ),
    "label AND tool: count up to 1,000": (
        f'SELECT COUNT(*) AS "matches" FROM (SELECT 1 FROM "agents" WHERE {WHERE} LIMIT ?) AS "matched"',
        LABEL_AND_TOOL + (1000,),
    ),
    "unfiltered count up to 10,000": (
        'SELECT COUNT(*) FROM (SELECT 1 FROM "agents" WHERE "agents"."tenant_id" = ? '
        'AND "agents"."delete_time" IS NULL LIMIT ?)',
        ("bench", 10_000),
    ),
    "unfiltered count up to 100,000 (every agent)": (
        'SELECT COUNT(*) FROM (SELECT 1 FROM "agents" WHERE "agents"."tenant_id" = ? '
        'AND "agents"."delete_time" IS NULL LIMIT ?)',
        ("bench", 100_000),
    ),
    "audit: actor = nobody, the whole trail": (
        f'SELECT {EVENT_COLS} FROM "audit_events" WHERE "audit_events"."tenant_id" = ? '
        'AND "audit_events"."actor" = ? ORDER BY "audit_events"."id" DESC LIMIT 51',
        ("bench", "nobody"),
    ),
    "audit: actor = nobody, a window of 2,000": (
        f'SELECT {EVENT_COLS} FROM "audit_events" WHERE "audit_events"."id" IN ({WINDOW_IDS}) '
        'AND "audit_events"."actor" = ? ORDER BY "audit_events"."id" DESC LIMIT 51',
        ("bench", "nobody"),
    ),
    "audit: the window's extent": (
        f'SELECT COUNT(*) AS "events", MIN("window_id") AS "oldest" FROM ({WINDOW_IDS}) AS "scan_window"',
        ("bench",),
    ),
}


def connect(path):
    db = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
    db.execute("PRAGMA cache_size=-32768")  # the registry's default, 32 MiB
    return db


def instructions(db, sql, args):
    calls = [0]

    def count():
        calls[0] += 1
        return 0

    db.set_progress_handler(count, 1000)
    db.execute(sql, args).fetchall()
    db.set_progress_handler(None)
    return calls[0] * 1000


def main(path):
    covering = path + ".covering"
    shutil.copyfile(path, covering)
    with apsw.Connection(covering) as db:
        db.execute(
            "DROP INDEX ix_agents_live_tenant_id; CREATE INDEX ix_agents_live_tenant_id "
            "ON agents (tenant_id, id, delete_time) WHERE delete_time IS NULL"
        )
    dbs = {"": connect(path), " [index with delete_time, not adopted]": connect(covering)}
    runs = {
        (name + suffix, sql, args): (db, [])
        for name, (sql, args) in QUERIES.items()
        for suffix, db in dbs.items()
        if not suffix or "count up to 1,000" in name
    }
    for _ in range(ROUNDS):
        for (name, sql, args), (db, times) in runs.items():
            began = time.perf_counter()
            db.execute(sql, args).fetchall()
            times.append((time.perf_counter() - began) * 1000)
    for (name, sql, args), (db, times) in runs.items():
        print(f"{name}: {statistics.median(times[WARM:]):.3f} ms, ~{instructions(db, sql, args):,} instructions")
        for row in db.execute("EXPLAIN QUERY PLAN " + sql, args):
            print("    " + row[3])


if __name__ == "__main__":
    main(sys.argv[1])
