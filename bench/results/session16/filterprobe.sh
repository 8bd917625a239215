#!/bin/bash
# Registry CPU per ListAgents call over one seeded copy (the same rows and
# planner statistics for every build): label AND tool by update_time desc,
# and the none-match filter, 40 calls per figure after 5, for each build
# given, in turn (grpcurl's reflection calls are in every figure).
. "$(dirname "$0")/probe_lib.sh"
PROVIDER=${PROVIDER:?the provider id of the none-match case (bench filter prints it)}
for BIN in "$@"; do
  start_pair "$BIN" viewer
  call() { grpcurl -plaintext -H "authorization: Bearer $TOKEN" -d "{\"filter\":\"$1\",\"order_by\":\"update_time desc\"}" 127.0.0.1:50162 agentregistry.v1.AgentService/ListAgents > /tmp/filterprobe.out; }
  for f in 'name = \"agent-054321\"' 'label:\"production\" AND tool:\"search\"' "provider = \\\"$PROVIDER\\\" AND tool:\\\"search\\\""; do
    echo "$BIN [$f]: registry CPU $(cpu_per_call "$PID" call "$f") us/call, agents on the page $(grep -c '"id"' /tmp/filterprobe.out)"
  done
done
stop_pair
