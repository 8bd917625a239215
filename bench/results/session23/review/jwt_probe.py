#!/usr/bin/env python3
"""Token handling probes from outside. usage: jwt_probe.py PORT SECRET_FILE"""
import sys, json, time, hmac, hashlib, base64, grpc
sys.path.insert(0, '/tmp/helperC/gen')
from agentregistry.v1 import agent_pb2 as apb, agent_pb2_grpc as arpc
from agentregistry.v1 import keys_pb2 as kpb, keys_pb2_grpc as krpc
port, secf = sys.argv[1], sys.argv[2]
KEY = open(secf, 'rb').read()
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b'=').decode()
def tok(header=None, claims=None, key=KEY, alg='sha256', sig=None, raw_claims=None):
    h = b64(json.dumps(header if header is not None else {'typ':'JWT','alg':'HS256'}).encode())
    p = b64(raw_claims.encode() if raw_claims is not None else json.dumps(claims).encode())
    if sig is None:
        sig = b64(hmac.new(key, f'{h}.{p}'.encode(), getattr(hashlib, alg)).digest())
    return f'{h}.{p}.{sig}'
now = int(time.time())
base = lambda **kw: {**{'sub':'alice','tenant':'acme','roles':['viewer','admin'],'iat':now,'exp':now+600}, **kw}
ch = grpc.insecure_channel(f'127.0.0.1:{port}', options=[('grpc.max_metadata_size', 8<<20)])
agents = arpc.AgentServiceStub(ch)
def call(name, token, stub=None):
    t = time.time()
    md = [('authorization', f'Bearer {token}')] if token is not None else []
    try:
        agents.ListAgents(apb.ListAgentsRequest(page_size=1), metadata=md, timeout=5); out = 'OK'
    except grpc.RpcError as e:
        out = f'{e.code().name}: {(e.details() or "")[:150]}'
    print(f'{name:48s} {1000*(time.time()-t):7.1f} ms  {out}', flush=True)
call('valid', tok(claims=base()))
call('no token', None)
call('expired 10s ago (in leeway)', tok(claims=base(iat=now-600, exp=now-10)))
call('expired 31s+ ago', tok(claims=base(iat=now-600, exp=now-40)))
call('nbf +1h', tok(claims=base(nbf=now+3600)))
call('nbf +20s (in leeway)', tok(claims=base(nbf=now+20)))
call('iat +1h (exp iat+60)', tok(claims=base(iat=now+3600, exp=now+3660)))
call('no iat', tok(claims={k:v for k,v in base().items() if k!='iat'}))
call('no exp', tok(claims={k:v for k,v in base().items() if k!='exp'}))
call('lifetime 2 days', tok(claims=base(exp=now+2*86400)))
call('exp float', tok(claims=base(exp=now+600.5)))
call('exp string', tok(claims=base(exp=str(now+600))))
call('exp 1e300', tok(claims=base(exp=1e300)))
call('iat negative', tok(claims=base(iat=-1)))
call('alg none, empty sig', tok(header={'alg':'none','typ':'JWT'}, claims=base(), sig=''))
call('alg None, empty sig', tok(header={'alg':'None'}, claims=base(), sig=''))
call('alg none, valid HS sig', tok(header={'alg':'none'}, claims=base()))
call('RS256 header, HS256 sig by secret', tok(header={'alg':'RS256','typ':'JWT'}, claims=base()))
call('ES256 header, HS256 sig', tok(header={'alg':'ES256'}, claims=base()))
call('HS512 by secret', tok(header={'alg':'HS512'}, claims=base(), alg='sha512'))
call('HS384 by secret', tok(header={'alg':'HS384'}, claims=base(), alg='sha384'))
call('kid present', tok(header={'alg':'HS256','kid':'x'}, claims=base()))
call('jku/jwk header', tok(header={'alg':'HS256','jku':'https://evil/jwks','jwk':{'kty':'oct','k':'AA'}}, claims=base()))
call('crit header', tok(header={'alg':'HS256','crit':['exp']}, claims=base()))
call('typ garbage', tok(header={'alg':'HS256','typ':'foo'}, claims=base()))
call('wrong secret', tok(claims=base(), key=b'x'*48))
call('empty secret', tok(claims=base(), key=b''))
t = tok(claims=base()); call('sig padded "="', t + '=')
call('sig last char flipped non-canonical', t[:-1] + chr(ord(t[-1]) ^ 1))
call('dup tenant keys (acme then evil)', tok(raw_claims=json.dumps(base())[:-1] + ', "tenant": "evil"}'))
call('tenant empty', tok(claims=base(tenant='')))
call('tenant array', tok(claims=base(tenant=['acme','evil'])))
call('tenant number', tok(claims=base(tenant=5)))
call('tenant 10k chars', tok(claims=base(tenant='t'*10000)))
call('tenant with \\u0000 and ../', tok(claims=base(tenant='acme\u0000/../x')))
call('roles string "admin viewer"', tok(claims=base(roles='admin viewer')))
call('roles null', tok(claims=base(roles=None)))
call('platform-operator claimed by alice', tok(claims=base(roles=['platform-operator'])))
call('sub empty', tok(claims=base(sub='')))
call('sub missing', tok(claims={k:v for k,v in base().items() if k!='sub'}))
call('Bearer lowercase / extra spaces', None)
for scheme in ['bearer ', 'Bearer  ', 'Basic ', 'Bearer\t']:
    t0 = time.time()
    try: agents.ListAgents(apb.ListAgentsRequest(page_size=1), metadata=[('authorization', scheme + tok(claims=base()))], timeout=5); o='OK'
    except grpc.RpcError as e: o = f'{e.code().name}: {e.details()[:100]}'
    print(f'  scheme {scheme!r:12s} {o}')
call('token with 6 KB claim', tok(claims=base(pad='p'*6000)))
call('token with 12 KB claim', tok(claims=base(pad='p'*12000)))
call('token with 100 KB claim', tok(claims=base(pad='p'*100000)))
call('deeply nested JSON 5000', tok(raw_claims=json.dumps(base())[:-1] + ', "n": ' + '['*5000 + ']'*5000 + '}'))
call('garbage 3 parts', 'a.b.c')
call('4 parts', t + '.x')
call('huge header part b64 junk 10KB', 'A'*10000 + '.' + t.split('.',1)[1])
