"""SQLite instructions and time of bench filter's queries, as the registry
writes them, on a copy of the seeded database (APSW 3.51.3, the SQLite the
registry bundles): python3 instructions_per_query.py <copy of registry.db>.
The instruction count is SQLite's progress handler called every 100."""
import apsw, sys, time, statistics
c = apsw.Connection(sys.argv[1], flags=apsw.SQLITE_OPEN_READONLY)
c.execute("PRAGMA cache_size=-32768")
tenant, = c.execute("select tenant_id from agents limit 1").fetchone()
provs = dict((n,i) for i,n in c.execute("select id,name from providers"))
live = "agents.tenant_id = :t AND agents.delete_time IS NULL"
tool = "EXISTS (SELECT 1 FROM agent_tools WHERE agent_tools.agent_id = agents.id AND agent_tools.tenant_id = :t AND agent_tools.tool = 'search')"
label_in = "agents.id IN (SELECT resource_id FROM labels WHERE labels.tenant_id = :t AND labels.kind = 'agent' AND labels.label = 'production')"
order = "agents.update_time DESC, agents.id DESC"
qs = {
 'none-match': (f"SELECT agents.* FROM agents WHERE {live} AND agents.llm_provider_id = :p AND {tool} ORDER BY {order} LIMIT 11", {'t':tenant,'p':provs['p1']}),
 'label and tool page': (f"SELECT agents.* FROM agents WHERE {live} AND {label_in} AND {tool} ORDER BY {order} LIMIT 11", {'t':tenant}),
 'label and tool count': (f"SELECT COUNT(*) FROM (SELECT 1 FROM agents WHERE {live} AND {label_in} AND {tool} LIMIT 1000)", {'t':tenant}),
 'count all': (f"SELECT COUNT(*) FROM agents WHERE {live}", {'t':tenant}),
 'window 2000': (f"SELECT agents.* FROM (SELECT agents.id AS wid FROM agents WHERE {live} ORDER BY {order} LIMIT 2000) AS w CROSS JOIN agents WHERE agents.id = w.wid AND agents.llm_provider_id = :p AND {tool} ORDER BY {order} LIMIT 11", {'t':tenant,'p':provs['p1']}),
}
for name,(q,a) in qs.items():
    ts=[]
    for _ in range(7):
        s=time.perf_counter(); list(c.execute(q,a)); ts.append((time.perf_counter()-s)*1e3)
    n=[0]
    def h():
        n[0]+=1; return 0
    c.set_progress_handler(h, 100)
    list(c.execute(q,a))
    c.set_progress_handler(None)
    ms=statistics.median(ts)
    print(f"{name}: {ms:.2f} ms, ~{n[0]*100} steps, {n[0]*100/ms:.0f} steps/ms")
