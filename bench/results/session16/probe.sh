#!/bin/bash
# A registry over a copy of the seeded bench database, for profiling one case.
BIN=${BIN:-/work/rel-new}
rm -rf /tmp/probe; mkdir -p /tmp/probe; cp "${SEEDED:-/work/filterdb.sqlite}" /tmp/probe/registry.db
ENCRYPTION_KEY="ERERERERERERERERERERERERERERERERERERERERERE=" $BIN/crypto-service --listen 127.0.0.1:50161 --insecure-dev-callers 2>/tmp/probe/crypto.log &
sleep 1
REGISTRY_DEV=true DATABASE_URL="sqlite:///tmp/probe/registry.db" CRYPTO_ENDPOINT="http://127.0.0.1:50161" JWT_HS256_SECRET=probe-secret-probe-secret-probe-secret $EXTRA \
  $BIN/registry-service --listen 127.0.0.1:50162 --log-level "${LOG:-warn}" 2>/tmp/probe/registry.log &
sleep 2
echo registry pid $(pgrep -f 'registry-service --listen 127.0.0.1:50162')
