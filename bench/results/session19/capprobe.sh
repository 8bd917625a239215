#!/bin/bash
# What a tenant admin's GetKeyStatus costs with a long key-bearing history
# (capseed.sql, SQLite): five calls each, twice, by the admin of `atcap`
# (10,000 values: counted) and of `over` (100,000: the new build refuses
# after reading 10,001), and by the platform operator (every value).
#   BIN=/work/rel-X bash capprobe.sh
set -euo pipefail
BIN=${BIN:-/work/rel-new}
here=$(cd "$(dirname "$0")" && pwd)
source "$here/../session17/probe_lib.sh"
start_pair "$here/capseed.sql"
OPERATOR=$(token operator ops admin,platform-operator)
ATCAP=$(token ada atcap admin)
OVER=$(token ada over admin)
for _ in 1 2; do five KeyService/GetKeyStatus "$ATCAP" '{}' "admin of atcap, 10,000"; done
for _ in 1 2; do five KeyService/GetKeyStatus "$OVER" '{}' "admin of over, 100,000"; done
for _ in 1 2; do five KeyService/GetKeyStatus "$OPERATOR" '{}' operator; done
