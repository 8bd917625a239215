#!/bin/bash
# How long RetireKeyVersion holds provider writers, and what counting
# stored values costs: a pair over a database seeded with 10,000 providers
# in 100 tenants and 100,000 version snapshots (holdseed.sql). Five calls
# each, twice: GetKeyStatus by a tenant admin (its tenant's values),
# GetKeyStatus by the platform operator (every value: one count) and
# RetireKeyVersion of version 3, which nothing uses and no keyring holds
# (two counts, the second inside the hold, then crypto-service's answer
# that it holds no such version).
#   BIN=/work/rel-X bash holdprobe.sh
set -euo pipefail
BIN=${BIN:-/work/rel-new}
here=$(cd "$(dirname "$0")" && pwd)
source "$here/probe_lib.sh"
start_pair "$here/holdseed.sql"
OPERATOR=$(token operator t042 admin,platform-operator)
ADMIN=$(token ada t042 admin)
for _ in 1 2; do five KeyService/GetKeyStatus "$ADMIN" '{}' "tenant admin"; done
for _ in 1 2; do five KeyService/GetKeyStatus "$OPERATOR" '{}' operator; done
for _ in 1 2; do five KeyService/RetireKeyVersion "$OPERATOR" '{"version": 3}' operator; done
