#!/usr/bin/env python3
"""Send N grpc calls (no token) to distinct bogus paths over one h2 connection,
plus distinct service names under real packages. usage: bogus_paths.py PORT N"""
import socket, sys, h2.connection, h2.config, h2.events
port, n = int(sys.argv[1]), int(sys.argv[2])
s = socket.create_connection(('127.0.0.1', port)); s.settimeout(3)
h = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
h.initiate_connection(); s.sendall(h.data_to_send())
h.receive_data(s.recv(65535)); s.sendall(h.data_to_send())
done = 0; codes = {}
paths = []
for i in range(n):
    k = i % 4
    if k == 0: p = f'/bogus.Svc{i}/M{i}'
    elif k == 1: p = f'/agentregistry.v1.AgentService/Nope{i}'
    elif k == 2: p = f'/grpc.health.v1.Health/X{i}'
    else: p = f'/x{i}'
    paths.append(p)
i = 0
while done < n:
    while i < n and h.open_outbound_streams < 100:
        sid = h.get_next_available_stream_id()
        h.send_headers(sid, [(':method','POST'),(':scheme','http'),(':path',paths[i]),(':authority','x'),('content-type','application/grpc'),('te','trailers')], end_stream=False)
        h.send_data(sid, b'\x00\x00\x00\x00\x00', end_stream=True); i += 1
    s.sendall(h.data_to_send())
    for ev in h.receive_data(s.recv(1<<20)):
        if isinstance(ev, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
            for k2, v in ev.headers:
                if k2 == b'grpc-status': codes[v] = codes.get(v, 0) + 1
        if isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)): done += 1
    s.sendall(h.data_to_send())
print('done', done, 'grpc-status counts', codes)
