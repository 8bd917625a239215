#!/usr/bin/env python3
"""Open N plaintext HTTP/2 connections that send only the preface+SETTINGS, hold HOLD s.
usage: idleconns.py PORT N HOLD [PREFIX_PYEXPR]"""
import socket, sys, time
port, n, hold = map(int, sys.argv[1:4])
P = eval(sys.argv[4]) if len(sys.argv) > 4 else b'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n' + b'\x00\x00\x00\x04\x00\x00\x00\x00\x00'
ss = []
for i in range(n):
    s = socket.create_connection(('127.0.0.1', port)); s.sendall(P); ss.append(s)
print('opened', len(ss), flush=True); time.sleep(hold)
alive = 0
for s in ss:
    s.setblocking(False)
    try:
        d = s.recv(65535); alive += 1 if d else 0
    except BlockingIOError: alive += 1
    except OSError: pass
print('alive after hold', alive)
