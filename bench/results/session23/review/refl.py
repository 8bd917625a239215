#!/usr/bin/env python3
"""Reflection cost: N requests on one bidi stream, and M fresh streams each asking for the full closure.
Also a request with a big host string (echoed twice). usage: refl.py PORT N M"""
import sys, time, grpc
from grpc_reflection.v1alpha import reflection_pb2 as pb, reflection_pb2_grpc as rpc
port, n, m = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ch = grpc.insecure_channel(f'127.0.0.1:{port}', options=[('grpc.max_receive_message_length', 64<<20), ('grpc.max_send_message_length', 64<<20)])
st = rpc.ServerReflectionStub(ch)
sym = 'agentregistry.v1.AgentService' if port != '52061' else 'agentregistry.crypto.v1.CryptoService'
t = time.time(); size = 0
for r in st.ServerReflectionInfo(iter([pb.ServerReflectionRequest(file_containing_symbol=sym)] * n)):
    size += r.ByteSize()
print(f'{n} requests one stream: {time.time()-t:.2f}s, {size} bytes answered')
t = time.time(); size = 0
for i in range(m):
    for r in st.ServerReflectionInfo(iter([pb.ServerReflectionRequest(file_containing_symbol=sym)])):
        size += r.ByteSize()
print(f'{m} fresh streams: {time.time()-t:.2f}s, {size} bytes answered, {size//max(m,1)} per stream')
big = 'h' * 250000
req = pb.ServerReflectionRequest(host=big, list_services='')
t = time.time()
for r in st.ServerReflectionInfo(iter([req])):
    print(f'request {req.ByteSize()} bytes -> response {r.ByteSize()} bytes ({time.time()-t:.3f}s)')
