#!/usr/bin/env python3
"""Unauthenticated Health/Check with a service name of SIZE bytes, repeated N times; prints per-call ms.
usage: bigcheck.py PORT SIZE N"""
import sys, time, grpc
sys.path.insert(0, '/tmp/helperC/gen')
port, size, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ch = grpc.insecure_channel(f'127.0.0.1:{port}', options=[('grpc.max_send_message_length', 64<<20)])
def enc(name):
    l = len(name); v = b''
    while True:
        b = l & 0x7f; l >>= 7; v += bytes([b | (0x80 if l else 0)])
        if not l: break
    return b'\x0a' + v + name
check = ch.unary_unary('/grpc.health.v1.Health/Check', request_serializer=lambda x: x, response_deserializer=lambda x: x)
body = enc(b'\xff' * 8 + b'a' * (size - 8))  # invalid UTF-8 forces validation of whole string? place at end too
for i in range(n):
    t = time.time()
    try: check(body, timeout=10); o = 'OK'
    except grpc.RpcError as e: o = f'{e.code().name}: {(e.details() or "")[:90]}'
    print(f'{size} bytes: {1000*(time.time()-t):.1f} ms {o}')
