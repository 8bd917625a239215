#!/usr/bin/env bash
# usage: run.sh BIN_DIR LABEL [WINDOW_S]
set -euo pipefail
BIN=$1; LABEL=$2; WINDOW=${3:-30}
D=/tmp/idle/$LABEL; rm -rf $D; mkdir -p $D
head -c 32 /dev/urandom | base64 > $D/key; head -c 48 /dev/urandom | base64 | tr -d '\n' > $D/jwt
ENCRYPTION_KEY_FILE=$D/key $BIN/crypto-service --listen 127.0.0.1:50161 --insecure-dev-callers 2>$D/crypto.log &
CP=$!
for i in $(seq 100); do grpcurl -plaintext 127.0.0.1:50161 grpc.health.v1.Health/Check >/dev/null 2>&1 && break; sleep 0.1; done
export JWT_HS256_SECRET_FILE=$D/jwt
env ${EXTRA_ENV:-} REGISTRY_DEV=true DATABASE_URL="sqlite://$D/registry.db" CRYPTO_ENDPOINT="http://127.0.0.1:50161" $BIN/registry-service --listen 127.0.0.1:50151 2>$D/registry.log &
RP=$!
trap 'kill $RP $CP 2>/dev/null; wait 2>/dev/null' EXIT
for i in $(seq 100); do grpcurl -plaintext 127.0.0.1:50151 grpc.health.v1.Health/Check >/dev/null 2>&1 && break; sleep 0.1; done
T=$($BIN/registry-service token --subject dev-admin --tenant dev --roles admin,editor --ttl-seconds 3600)
for i in 1 2 3 4 5; do
  grpcurl -plaintext -H "authorization: Bearer $T" -d "{\"agent\":{\"name\":\"a$i\",\"role\":\"r\",\"goal\":\"g\",\"backstory\":\"b\"}}" 127.0.0.1:50151 agentregistry.v1.AgentService/CreateAgent >/dev/null
done
sleep 5; if [ -n "${HOLD:-}" ]; then echo $RP > $D/pid; sleep $HOLD; exit 0; fi
snap() { for t in /proc/$RP/task/*; do echo "$(basename $t) $(cat $t/comm | tr ' ' _) $(cut -d' ' -f1 $t/schedstat)"; done; }
snap > $D/a; sleep $WINDOW; snap > $D/b
python3 - $D/a $D/b $WINDOW <<'PY'
import sys
a={l.split()[0]:(l.split()[1],int(l.split()[2])) for l in open(sys.argv[1])}
b={l.split()[0]:(l.split()[1],int(l.split()[2])) for l in open(sys.argv[2])}
w=float(sys.argv[3]); tot=0
for k,(n,v) in sorted(b.items()):
    d=v-a.get(k,(n,0))[1]; tot+=d
    if d: print(f"  {n:20s} {d/w/1000:8.1f} µs/s")
print(f"  TOTAL {tot/w/1000:.1f} µs/s")
PY
