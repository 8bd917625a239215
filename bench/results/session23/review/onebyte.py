#!/usr/bin/env python3
"""Send PREFIX bytes once, then stay silent; report when (if) the server closes.
usage: onebyte.py PORT PREFIX_REPR MAXWAIT   e.g. onebyte.py 52051 "b'P'" 120"""
import socket, sys, time, ast
port, prefix, maxwait = int(sys.argv[1]), ast.literal_eval(sys.argv[2]), float(sys.argv[3])
s = socket.create_connection(('127.0.0.1', port)); t0 = time.time(); s.sendall(prefix); s.settimeout(1)
got = b''
while time.time() - t0 < maxwait:
    try:
        d = s.recv(65535)
        if not d: print(repr(prefix)[:40], 'closed by server after %.1fs' % (time.time()-t0), 'got', got[:60]); sys.exit()
        got += d
    except socket.timeout: pass
    except ConnectionResetError: print(repr(prefix)[:40], 'reset after %.1fs' % (time.time()-t0)); sys.exit()
print(repr(prefix)[:40], 'STILL OPEN after %ds' % maxwait, 'got', got[:60])
