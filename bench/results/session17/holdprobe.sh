#!/bin/bash
# How long RetireKeyVersion holds provider writers: a pair over a copy of a
# database seeded with 10,000 providers and 100,000 version snapshots
# (holdseed.sql). Five calls each, one at a time, of GetKeyStatus by a
# tenant admin of one of the 100 tenants (its tenant's values),
# GetKeyStatus by the platform operator (every value: one count) and
# RetireKeyVersion of version 3, which nothing uses and no keyring holds
# (two counts, the second inside the hold, then crypto-service's answer
# that it holds no such version). Printed: the registry's own mean
# handling time per call (its grpc_server_handling_seconds sum and count,
# read from /metrics before and after each five) and its CPU per call.
set -euo pipefail
BIN=${BIN:-/work/rel-new}
here=$(cd "$(dirname "$0")" && pwd)
rm -rf /tmp/hold; mkdir -p /tmp/hold
"$BIN/registry-service" --database-url "sqlite:///tmp/hold/registry.db?mode=rwc" migrate up > /dev/null
sqlite3 /tmp/hold/registry.db < "$here/holdseed.sql"
ENCRYPTION_KEY="ERERERERERERERERERERERERERERERERERERERERERE=" "$BIN/crypto-service" --listen 127.0.0.1:50171 --insecure-dev-callers 2>/tmp/hold/crypto.log &
crypto=$!
REGISTRY_METRICS_LISTEN=127.0.0.1:50173 REGISTRY_DEV=true DATABASE_URL="sqlite:///tmp/hold/registry.db" CRYPTO_ENDPOINT="http://127.0.0.1:50171" \
  JWT_HS256_SECRET=probe-secret-probe-secret-probe-secret PLATFORM_OPERATOR_SUBJECTS=operator \
  "$BIN/registry-service" --listen 127.0.0.1:50172 --log-level warn 2>/tmp/hold/registry.log &
registry=$!
trap 'kill $registry $crypto' EXIT
until grpcurl -plaintext 127.0.0.1:50172 grpc.health.v1.Health/Check 2>/dev/null | grep -q SERVING; do sleep 0.2; done
token() {
  JWT_HS256_SECRET=probe-secret-probe-secret-probe-secret "$BIN/registry-service" token --subject "$1" --tenant t042 --roles "$2" --ttl-seconds 3600
}
OPERATOR=$(token operator admin,platform-operator)
ADMIN=$(token ada admin)
# handled METHOD: the registry's summed handling seconds and call count.
handled() {
  curl -s http://127.0.0.1:50173/metrics | awk -v m="grpc_method=\"$1\"" '
    index($0, "grpc_server_handling_seconds_sum") == 1 && index($0, m) { sum += $2 }
    index($0, "grpc_server_handling_seconds_count") == 1 && index($0, m) { n += $2 }
    END { printf "%f %d\n", sum, n }'
}
cpu() { awk '{print $14 + $15}' "/proc/$registry/stat"; }
five() {
  local method=$1 token=$2 body=$3 who=$4 before cpu_before after cpu_after
  read -r -a before <<< "$(handled "$method")"
  cpu_before=$(cpu)
  for i in 1 2 3 4 5; do
    grpcurl -plaintext -H "authorization: Bearer $token" -d "$body" 127.0.0.1:50172 \
      "agentregistry.v1.KeyService/$method" > /tmp/hold/out.txt 2>&1 || true
  done
  cpu_after=$(cpu)
  read -r -a after <<< "$(handled "$method")"
  awk -v m="$method ($who)" -v s0="${before[0]}" -v n0="${before[1]}" -v s1="${after[0]}" -v n1="${after[1]}" \
    -v c="$(( (cpu_after - cpu_before) * 10 / 5 ))" -v out="$(tr -d ' \n' < /tmp/hold/out.txt | head -c 80)" \
    'BEGIN { printf "%s: %.1f ms handled, %d ms CPU per call: %s\n", m, (s1 - s0) * 1000 / (n1 - n0), c, out }'
}
# The seeded rows' audit events and changes are sealed and compacted in
# the background after start-up: measure once the registry is idle.
for _ in $(seq 120); do
  c0=$(cpu); sleep 1; c1=$(cpu)
  [ $(( c1 - c0 )) -le 1 ] && break
done
five GetKeyStatus "$ADMIN" '{}' "tenant admin"
five GetKeyStatus "$ADMIN" '{}' "tenant admin"
five GetKeyStatus "$OPERATOR" '{}' operator
five GetKeyStatus "$OPERATOR" '{}' operator
five RetireKeyVersion "$OPERATOR" '{"version": 3}' operator
five RetireKeyVersion "$OPERATOR" '{"version": 3}' operator
