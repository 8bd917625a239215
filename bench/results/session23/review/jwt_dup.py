#!/usr/bin/env python3
"""Which tenant wins when the claims JSON holds "tenant" twice? usage: jwt_dup.py PORT SECRET_FILE"""
import sys, json, time, hmac, hashlib, base64, grpc
sys.path.insert(0, '/tmp/helperC/gen')
from agentregistry.v1 import agent_pb2 as apb, agent_pb2_grpc as arpc
port, secf = sys.argv[1:3]; KEY = open(secf,'rb').read()
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b'=').decode()
def tok(raw):
    h = b64(b'{"alg":"HS256"}'); p = b64(raw.encode())
    return f'{h}.{p}.' + b64(hmac.new(KEY, f'{h}.{p}'.encode(), hashlib.sha256).digest())
now = int(time.time())
dup = '{"sub":"alice","tenant":"acme","roles":["editor","viewer"],"iat":%d,"exp":%d,"tenant":"dupwin"}' % (now, now+600)
one = lambda t: '{"sub":"alice","tenant":"%s","roles":["viewer"],"iat":%d,"exp":%d}' % (t, now, now+600)
s = arpc.AgentServiceStub(grpc.insecure_channel(f'127.0.0.1:{port}'))
a = s.CreateAgent(apb.CreateAgentRequest(agent=apb.Agent(name=f'dup{now}', role='r', goal='g')), metadata=[('authorization','Bearer '+tok(dup))])
print('created', a.id)
for t in ['acme', 'dupwin']:
    r = s.ListAgents(apb.ListAgentsRequest(page_size=100), metadata=[('authorization','Bearer '+tok(one(t)))])
    print(t, 'sees it:', any(x.id == a.id for x in r.agents))
