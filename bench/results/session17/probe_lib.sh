# Sourced by holdprobe.sh and versionsprobe.sh: a pair of $BIN's binaries
# over a fresh SQLite database, and the registry's own time and CPU per
# call, measured from outside.

# `start_pair SEED.sql`: migrates a fresh database (SQLite; PostgreSQL's
# database `probe17` on 127.0.0.1:5432 when PG=1), runs SEED.sql in it
# (written for that database), starts crypto-service and the registry
# (metrics on 127.0.0.1:50173),
# waits until the registry is idle (the seeded rows' audit events and
# changes are sealed and compacted in the background after start-up),
# and sets REGISTRY (its pid).
start_pair() {
  rm -rf /tmp/probe17; mkdir -p /tmp/probe17
  local url
  if [ "${PG:-0}" = 1 ]; then
    url=postgres://postgres@127.0.0.1:5432/probe17
    psql -h 127.0.0.1 -U postgres -d test -q -c 'DROP DATABASE IF EXISTS probe17 WITH (FORCE)' -c 'CREATE DATABASE probe17'
    "$BIN/registry-service" --database-url "$url" migrate up > /dev/null
    psql -h 127.0.0.1 -U postgres -d probe17 -q < "$1"
  else
    url="sqlite:///tmp/probe17/registry.db"
    "$BIN/registry-service" --database-url "$url?mode=rwc" migrate up > /dev/null
    sqlite3 /tmp/probe17/registry.db < "$1"
  fi
  ENCRYPTION_KEY="ERERERERERERERERERERERERERERERERERERERERERE=" "$BIN/crypto-service" \
    --listen 127.0.0.1:50171 --insecure-dev-callers 2>/tmp/probe17/crypto.log &
  CRYPTO=$!
  REGISTRY_METRICS_LISTEN=127.0.0.1:50173 REGISTRY_DEV=true DATABASE_URL="$url" \
    CRYPTO_ENDPOINT="http://127.0.0.1:50171" JWT_HS256_SECRET=probe-secret-probe-secret-probe-secret \
    PLATFORM_OPERATOR_SUBJECTS=operator \
    "$BIN/registry-service" --listen 127.0.0.1:50172 --log-level warn 2>/tmp/probe17/registry.log &
  REGISTRY=$!
  trap 'kill $REGISTRY $CRYPTO' EXIT
  until grpcurl -plaintext 127.0.0.1:50172 grpc.health.v1.Health/Check 2>/dev/null | grep -q SERVING; do
    sleep 0.2
  done
  for _ in $(seq 120); do
    local c0 c1
    c0=$(cpu); sleep 1; c1=$(cpu)
    [ $(( c1 - c0 )) -le 1 ] && break
  done
}

# `token SUBJECT TENANT ROLES`
token() {
  JWT_HS256_SECRET=probe-secret-probe-secret-probe-secret "$BIN/registry-service" token \
    --subject "$1" --tenant "$2" --roles "$3" --ttl-seconds 3600
}

# The registry's CPU so far, in clock ticks (10 ms).
cpu() { awk '{print $14 + $15}' "/proc/$REGISTRY/stat"; }

# `handled METHOD`: the registry's summed handling seconds and call count.
handled() {
  curl -s http://127.0.0.1:50173/metrics | awk -v m="grpc_method=\"$1\"" '
    index($0, "grpc_server_handling_seconds_sum") == 1 && index($0, m) { sum += $2 }
    index($0, "grpc_server_handling_seconds_count") == 1 && index($0, m) { n += $2 }
    END { printf "%f %d\n", sum, n }'
}

# `five SERVICE/METHOD TOKEN BODY WHO`: five calls with grpcurl, one at a
# time; prints the registry's mean handling time and CPU per call (grpcurl's
# reflection included in the CPU) and the last answer's start.
five() {
  local method=${1#*/} before after cpu_before cpu_after
  read -r -a before <<< "$(handled "$method")"
  cpu_before=$(cpu)
  for _ in 1 2 3 4 5; do
    grpcurl -plaintext -H "authorization: Bearer $2" -d "$3" 127.0.0.1:50172 \
      "agentregistry.v1.$1" > /tmp/probe17/out.txt 2>&1 || true
  done
  cpu_after=$(cpu)
  read -r -a after <<< "$(handled "$method")"
  awk -v m="$method ($4)" -v s0="${before[0]}" -v n0="${before[1]}" -v s1="${after[0]}" \
    -v n1="${after[1]}" -v c="$(( (cpu_after - cpu_before) * 10 / 5 ))" \
    -v out="$(tr -d ' \n' < /tmp/probe17/out.txt | head -c 80)" \
    'BEGIN { printf "%s: %.2f ms handled, %d ms CPU per call: %s\n", m, (s1 - s0) * 1000 / (n1 - n0), c, out }'
}
