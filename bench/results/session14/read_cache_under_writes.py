"""How long the read connection's page cache lasts (fourteenth session).

Runs `label:"production" AND tool:"search"`, ordered by update_time desc
(bench filter's query, as the registry's SQL) on a copy of bench filter's
seeded database, nine times per setting, with and without a one-row write
on another connection before each read. SQLite resets a connection's page
cache when a read transaction finds the database changed (WAL), so what
the cache saves holds only between writes.

    pip install apsw==3.51.3.0   # SQLite 3.51.3, as the registry bundles
    python3 read_cache_under_writes.py /tmp/agents-copy.db
"""

import sys
import time

import apsw

QUERY = """SELECT id, update_time FROM agents
WHERE tenant_id = ?1 AND delete_time IS NULL
  AND id IN (SELECT resource_id FROM labels
             WHERE tenant_id = ?1 AND kind = 'agent' AND label = 'production')
  AND EXISTS (SELECT 1 FROM agent_tools
              WHERE agent_tools.agent_id = agents.id AND agent_tools.tool = 'search')
ORDER BY update_time DESC, id DESC LIMIT 11"""


def median_ms(reader, writer, tenant, agent, write_first):
    times = []
    for i in range(9):
        if write_first:
            writer.execute("UPDATE agents SET updated_by = ? WHERE id = ?", (f"bench-{i}", agent))
        began = time.perf_counter()
        list(reader.execute(QUERY, (tenant,)))
        times.append(time.perf_counter() - began)
    times.sort()
    return times[len(times) // 2] * 1000


def main(path):
    writer = apsw.Connection(path)
    writer.execute("PRAGMA journal_mode = wal")
    tenant, agent = next(writer.execute("SELECT tenant_id, id FROM agents LIMIT 1"))
    print(f"SQLite {apsw.sqlite_lib_version()}")
    for setting in [
        "PRAGMA cache_size = -2000",
        "PRAGMA cache_size = -8192",
        "PRAGMA cache_size = -32768",
        "PRAGMA mmap_size = 1073741824",
    ]:
        reader = apsw.Connection(path)
        reader.execute(setting)
        for write_first in (False, True):
            ms = median_ms(reader, writer, tenant, agent, write_first)
            when = "a write before each read" if write_first else "no writes"
            print(f"{setting:31} {when:26} median {ms:.2f} ms")


if __name__ == "__main__":
    main(sys.argv[1])
