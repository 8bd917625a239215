# Black-box review script (twenty-second session): the review helper's client harness (paths under /tmp/helperA: tokens, stubs, the registry pid).
import sys, os, time, glob, json
sys.path.insert(0, '/tmp/helperA/gen')
import grpc
from google.protobuf import struct_pb2, field_mask_pb2, json_format
from google.rpc import status_pb2, error_details_pb2
from agentregistry.v1 import agent_pb2, agent_pb2_grpc, provider_pb2, provider_pb2_grpc, common_pb2, runtime_pb2, runtime_pb2_grpc, audit_pb2, audit_pb2_grpc, keys_pb2, keys_pb2_grpc, label_policy_pb2, label_policy_pb2_grpc, watch_pb2, watch_pb2_grpc

ADDR = '127.0.0.1:51051'
RPID = int(open('/tmp/helperA/registry.pid').read())
def tok(n): return open(f'/tmp/helperA/tok/{n}').read().strip()
OPTS = [('grpc.max_send_message_length', 64<<20), ('grpc.max_receive_message_length', 64<<20)]
ch = grpc.insecure_channel(ADDR, options=OPTS)
A = agent_pb2_grpc.AgentServiceStub(ch)
P = provider_pb2_grpc.ProviderServiceStub(ch)
R = runtime_pb2_grpc.RuntimeServiceStub(ch)
AU = audit_pb2_grpc.AuditServiceStub(ch)
K = keys_pb2_grpc.KeyServiceStub(ch)
LP = label_policy_pb2_grpc.LabelPolicyServiceStub(ch)
W = watch_pb2_grpc.WatchServiceStub(ch)
RESP_LOG = open('/tmp/helperA/responses.log', 'a')

def cpu_ns(pid=None):
    pid = pid or RPID
    t = 0
    for f in glob.glob(f'/proc/{pid}/task/*/schedstat'):
        try: t += int(open(f).read().split()[0])
        except Exception: pass
    return t

def decode_details(e):
    out = {}
    md = dict(e.trailing_metadata() or [])
    raw = md.get('grpc-status-details-bin')
    if raw:
        st = status_pb2.Status(); st.ParseFromString(raw)
        for d in st.details:
            for cls in (error_details_pb2.BadRequest, error_details_pb2.ErrorInfo, error_details_pb2.ResourceInfo, error_details_pb2.QuotaFailure, error_details_pb2.RetryInfo, error_details_pb2.PreconditionFailure):
                if d.Is(cls.DESCRIPTOR):
                    m = cls(); d.Unpack(m)
                    if cls is error_details_pb2.BadRequest:
                        out.setdefault('bad', []).extend([(v.field, v.description[:120]) for v in m.field_violations])
                    elif cls is error_details_pb2.ErrorInfo:
                        out['reason'] = m.reason
                    else:
                        out[cls.__name__] = json_format.MessageToDict(m)
    return out

def call(fn, req, token='admin', timeout=30, md=None, quiet=False):
    meta = [('authorization', 'Bearer ' + tok(token))] if token else []
    if md: meta += md
    c0 = cpu_ns(); t0 = time.perf_counter()
    try:
        r = fn(req, metadata=meta, timeout=timeout)
        code, det, resp = 'OK', {}, r
        RESP_LOG.write(str(r) + '\n')
    except grpc.RpcError as e:
        code, det, resp = e.code().name, decode_details(e), e.details()
        RESP_LOG.write(f'{code} {e.details()} {det}\n')
    wall = (time.perf_counter() - t0) * 1000
    time.sleep(0.02)
    cpu = (cpu_ns() - c0) / 1e6
    RESP_LOG.flush()
    return code, det, resp, wall, cpu

def show(label, res):
    code, det, resp, wall, cpu = res
    s = resp if code != 'OK' else ''
    print(f'{label:50s} {code:20s} wall={wall:8.1f}ms cpu={cpu:8.2f}ms {str(s)[:160]!s} {det if det else ""}'[:500])
