#!/usr/bin/env python3
"""Malicious-caller probes against crypto-service (dev mode: caller has every role).
usage: crypto_probe.py PORT"""
import sys, time, base64, grpc
sys.path.insert(0, '/tmp/helperC/gen')
from agentregistry.crypto.v1 import crypto_pb2 as pb, crypto_pb2_grpc as rpc
port = sys.argv[1]
ch = grpc.insecure_channel(f'127.0.0.1:{port}', options=[('grpc.max_send_message_length', 64<<20), ('grpc.max_receive_message_length', 64<<20)])
c = rpc.CryptoServiceStub(ch)
SECRET = b'sk-PLAINTEXT-MARKER-7f3a9c'
def call(name, f, req):
    t = time.time()
    try:
        r = f(req, timeout=20); out = 'OK ' + str(r)[:160].replace('\n', ' ')
    except grpc.RpcError as e:
        out = f'{e.code().name}: {(e.details() or "")[:200]}'
    print(f'{name:45s} {1000*(time.time()-t):8.1f} ms  {out}', flush=True)
    return locals().get('r')
aad = b'agentregistry.v1|tenant=acme|provider=p1|field=api_key'
r = call('Encrypt marker', c.Encrypt, pb.EncryptRequest(plaintext=SECRET, associated_data=aad))
ct = r.ciphertext
call('Decrypt ok', c.Decrypt, pb.DecryptRequest(ciphertext=ct, associated_data=aad))
call('Decrypt wrong aad', c.Decrypt, pb.DecryptRequest(ciphertext=ct, associated_data=aad + b'x'))
call('Decrypt aad 4096 (wrong)', c.Decrypt, pb.DecryptRequest(ciphertext=ct, associated_data=b'a'*4096))
call('Decrypt aad 4097', c.Decrypt, pb.DecryptRequest(ciphertext=ct, associated_data=b'a'*4097))
call('Encrypt aad 4096', c.Encrypt, pb.EncryptRequest(plaintext=SECRET, associated_data=b'b'*4096))
call('Encrypt plaintext 65536', c.Encrypt, pb.EncryptRequest(plaintext=SECRET + b'p'*(65536-len(SECRET))))
call('Encrypt plaintext 65537', c.Encrypt, pb.EncryptRequest(plaintext=SECRET + b'p'*(65537-len(SECRET))))
call('Encrypt empty plaintext', c.Encrypt, pb.EncryptRequest(plaintext=b''))
hdr = ct.split('.')[0] + '.' + ct.split('.')[1] + '.'
big = hdr + 'A' * (4_000_000)
call('Decrypt 4 MB forged ciphertext', c.Decrypt, pb.DecryptRequest(ciphertext=big, associated_data=aad))
call('Decrypt 4.2 MB ciphertext (over limit)', c.Decrypt, pb.DecryptRequest(ciphertext=hdr + 'A'*4_300_000))
call('Decrypt ciphertext with SECRET in it', c.Decrypt, pb.DecryptRequest(ciphertext=SECRET.decode(), associated_data=aad))
call('Decrypt arc1.1.<secret>', c.Decrypt, pb.DecryptRequest(ciphertext=hdr + SECRET.decode(), associated_data=aad))
for v in ['0', '4294967295', '4294967296', '99999999999999999999', '-1', '1' * 1000]:
    call(f'Decrypt version {v[:20]}', c.Decrypt, pb.DecryptRequest(ciphertext=f'arc1.{v}.' + ct.split('.',2)[2], associated_data=aad))
call('Decrypt tampered tag', c.Decrypt, pb.DecryptRequest(ciphertext=ct[:-2] + ('A' if ct[-2] != 'A' else 'B') + ct[-1], associated_data=aad))
# batches of large forged ciphertexts
item = pb.DecryptRequest(ciphertext=hdr + 'A' * 4000, associated_data=b'z'*4)
call('Rewrap 1000 x 4 KB forged', c.Rewrap, pb.RewrapRequest(items=[item]*1000))
item = pb.DecryptRequest(ciphertext=ct, associated_data=aad)
call('Rewrap 1000 x valid', c.Rewrap, pb.RewrapRequest(items=[item]*1000))
call('DecryptBatch 1000 valid', c.DecryptBatch, pb.DecryptBatchRequest(items=[item]*1000))
call('DecryptBatch 999 valid + 1 bad', c.DecryptBatch, pb.DecryptBatchRequest(items=[item]*999 + [pb.DecryptRequest(ciphertext=ct, associated_data=b'bad')]))
call('EncryptBatch 60 x 64KB', c.EncryptBatch, pb.EncryptBatchRequest(items=[pb.EncryptRequest(plaintext=SECRET + b'q'*65000)]*60))
call('EncryptBatch 1001', c.EncryptBatch, pb.EncryptBatchRequest(items=[pb.EncryptRequest(plaintext=SECRET)]*1001))
call('ImportFernet garbage token with secret', c.ImportFernet, pb.ImportFernetRequest(items=[pb.ImportFernetItem(token='gAAAAA' + SECRET.decode(), associated_data=aad)]))
call('GetKeyInfo', c.GetKeyInfo, pb.GetKeyInfoRequest())
for v in [0, 2, 4294967295, 1]:
    call(f'RetireKeyVersion {v}', c.RetireKeyVersion, pb.RetireKeyVersionRequest(version=v))
call('GetKeyInfo after', c.GetKeyInfo, pb.GetKeyInfoRequest())
call('Decrypt ok after retire attempts', c.Decrypt, pb.DecryptRequest(ciphertext=ct, associated_data=aad))
