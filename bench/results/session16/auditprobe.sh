#!/bin/bash
# Registry CPU per ListAuditEvents call over the seeded copy: filter nobody meets vs unfiltered.
. "$(dirname "$0")/probe_lib.sh"
for BIN in "$@"; do
  start_pair "$BIN" admin
  call() { grpcurl -plaintext -H "authorization: Bearer $TOKEN" -d "{\"filter\":\"$1\",\"page_size\":50}" 127.0.0.1:50162 agentregistry.v1.AuditService/ListAuditEvents > /tmp/auditprobe.out; }
  for f in '' 'actor = \"nobody\"'; do
    echo "$BIN filter [$f]: registry CPU $(cpu_per_call "$PID" call "$f") us/call, last page events $(grep -c '"id"' /tmp/auditprobe.out), token $(grep -c nextPageToken /tmp/auditprobe.out)"
  done
done
stop_pair
