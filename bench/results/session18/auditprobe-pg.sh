#!/bin/bash
# What a filtered ListAuditEvents page costs on PostgreSQL when no event
# meets the filter: tenant `acme`'s 300,000 events (auditseed-pg.sql), its
# admin asking for `actor = "nobody"` and for events after 2030. Five
# calls each, twice; the registry's handling time per call and the answer.
#   BIN=/work/rel-X [SEED=auditseed-pg-1m.sql] bash auditprobe-pg.sh
set -euo pipefail
BIN=${BIN:-/work/rel-new}
here=$(cd "$(dirname "$0")" && pwd)
PG=1
source "$here/../session17/probe_lib.sh"
start_pair "${SEED:-$here/auditseed-pg.sql}"
ADMIN=$(token alice acme admin)
for filter in 'actor = \"nobody\"' 'time > 2030-01-01T00:00:00Z'; do
  request="{\"filter\": \"$filter\", \"page_size\": 50}"
  for _ in 1 2; do five AuditService/ListAuditEvents "$ADMIN" "$request" "$filter"; done
done
