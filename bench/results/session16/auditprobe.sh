#!/bin/bash
# Registry CPU per ListAuditEvents call over the seeded copy: filter nobody meets vs unfiltered.
for BIN in "$@"; do
  pkill -f 'registry-service --listen 127.0.0.1:50162'; pkill -f 'crypto-service --listen 127.0.0.1:50161'; sleep 0.5
  BIN=$BIN "$(dirname "$0")/probe.sh" > /dev/null
  TOKEN=$(JWT_HS256_SECRET=probe-secret-probe-secret-probe-secret $BIN/registry-service token --subject bench --tenant bench --roles admin --ttl-seconds 3600)
  PID=$(pgrep -f 'registry-service --listen 127.0.0.1:50162')
  call() { grpcurl -plaintext -H "authorization: Bearer $TOKEN" -d "{\"filter\":\"$1\",\"page_size\":50}" 127.0.0.1:50162 agentregistry.v1.AuditService/ListAuditEvents > /tmp/auditprobe.out; }
  for f in '' 'actor = \"nobody\"'; do
    for i in 1 2 3 4 5; do call "$f"; done
    T0=$(awk '{print $14+$15}' /proc/$PID/stat)
    for i in $(seq 40); do call "$f"; done
    T1=$(awk '{print $14+$15}' /proc/$PID/stat)
    echo "$BIN filter [$f]: registry CPU $(( (T1-T0)*10000/40 )) us/call, last page events $(grep -c '"id"' /tmp/auditprobe.out), token $(grep -c nextPageToken /tmp/auditprobe.out)"
  done
done
pkill -f 'registry-service --listen 127.0.0.1:50162'; pkill -f 'crypto-service --listen 127.0.0.1:50161'
