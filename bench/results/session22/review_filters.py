# Black-box review script (twenty-second session): filtered ListAgents pages, 5 calls each, registry CPU per call from /proc.
from review_harness import *
import statistics
def L(f, ob='', ps=100, tk=''):
    return call(A.ListAgents, agent_pb2.ListAgentsRequest(filter=f, order_by=ob, page_size=ps, page_token=tk), token='big')
cases = [
 ('none', ''),
 ('name=nomatch', 'name = "zzz"'),
 ('name prefix', 'name = "agent-0*"'),
 ('tool nomatch', 'tool:"nope"'),
 ('tool common AND name nomatch', 'tool:"common" AND name = "zz"'),
 ('32 OR tools', ' OR '.join(['tool:"n%d"' % i for i in range(32)])),
 ('32 OR name prefix', ' OR '.join(['name = "x%d*"' % i for i in range(32)])),
 ('NOT name', 'NOT name = "agent-00001"'),
 ('name != prefix AND tool', 'name != "agent*" AND tool:"common"'),
 ('label nomatch', 'label = "nolabel"'),
 ('update_time range', 'update_time > "2000-01-01T00:00:00Z" AND update_time < "2001-01-01T00:00:00Z"'),
 ('provider nomatch', 'provider = "01a2526b-bd82-727b-be57-31e2b2318dfa"'),
 ('deleted', 'deleted'),
 ('nested OR/AND 16 parens', '('*16 + 'tool:"a" OR tool:"b"' + ')'*16 + ' AND ' + ' AND '.join(['NOT tool:"c%d"'%i for i in range(29)])),
 ('name > ', 'name > "agent-02990"'),
 ('tool:common, order name desc', 'tool:"common"'),
]
for name, f in cases:
    for ob in ['', 'update_time desc, name']:
        rs = [L(f, ob) for _ in range(5)]
        cpus = sorted(r[4] for r in rs); walls = sorted(r[3] for r in rs)
        r = rs[0]
        n = len(r[2].agents) if r[0]=='OK' else -1
        print(f'{name[:34]:34s} ob={ob[:10]:10s} {r[0]:16s} n={n:3d} total={getattr(r[2],"total_size",-1):5d} next={"Y" if r[0]=="OK" and r[2].next_page_token else "N"} cpu med={statistics.median(cpus):6.2f} max={cpus[-1]:6.2f} wall med={statistics.median(walls):6.2f} {str(r[2])[:80] if r[0]!="OK" else ""}')
