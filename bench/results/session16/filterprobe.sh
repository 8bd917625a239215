#!/bin/bash
# Registry CPU per ListAgents call over one seeded copy (the same rows and
# planner statistics for every build): label AND tool by update_time desc,
# and the none-match filter, 40 calls per figure after 5, for each build
# given, in turn (grpcurl's reflection calls are in every figure).
PROVIDER=${PROVIDER:?the provider id of the none-match case (bench filter prints it)}
for BIN in "$@"; do
  pkill -f 'registry-service --listen 127.0.0.1:50162'; pkill -f 'crypto-service --listen 127.0.0.1:50161'; sleep 0.5
  BIN=$BIN "$(dirname "$0")/probe.sh" > /dev/null
  TOKEN=$(JWT_HS256_SECRET=probe-secret-probe-secret-probe-secret $BIN/registry-service token --subject bench --tenant bench --roles viewer --ttl-seconds 3600)
  PID=$(pgrep -f 'registry-service --listen 127.0.0.1:50162')
  call() { grpcurl -plaintext -H "authorization: Bearer $TOKEN" -d "{\"filter\":\"$1\",\"order_by\":\"update_time desc\"}" 127.0.0.1:50162 agentregistry.v1.AgentService/ListAgents > /tmp/filterprobe.out; }
  for f in 'name = \"agent-054321\"' 'label:\"production\" AND tool:\"search\"' "provider = \\\"$PROVIDER\\\" AND tool:\\\"search\\\""; do
    for i in 1 2 3 4 5; do call "$f"; done
    T0=$(awk '{print $14+$15}' /proc/$PID/stat)
    for i in $(seq 40); do call "$f"; done
    T1=$(awk '{print $14+$15}' /proc/$PID/stat)
    echo "$BIN [$f]: registry CPU $(( (T1-T0)*10000/40 )) us/call, agents on the page $(grep -c '"id"' /tmp/filterprobe.out)"
  done
done
pkill -f 'registry-service --listen 127.0.0.1:50162'; pkill -f 'crypto-service --listen 127.0.0.1:50161'
