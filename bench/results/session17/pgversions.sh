#!/bin/bash
# A version listing naming another tenant's resource, on PostgreSQL: the
# old query (versions joined to the resource, the tenant tested on the
# join) against the new one (versions looked up by the id the caller's own
# resource row answers), EXPLAIN ANALYZE. 10,000 providers of 100 tenants
# with 10 versions each, and tenant `owner`'s provider `p-long` with
# 200,000 versions; the caller is tenant `other`, then `owner`.
#   BIN=/work/rel-X bash pgversions.sh
set -euo pipefail
BIN=${BIN:-/work/rel-new}
psql=(psql -h 127.0.0.1 -U postgres -q)
"${psql[@]}" -d test -c 'DROP DATABASE IF EXISTS vprobe' -c 'CREATE DATABASE vprobe'
"$BIN/registry-service" --database-url postgres://postgres@127.0.0.1:5432/vprobe migrate up > /dev/null
"${psql[@]}" -d vprobe <<'SQL'
INSERT INTO providers (id, tenant_id, name, provider_type, config, api_key_ciphertext, is_default,
                       version, create_time, update_time, created_by, updated_by)
SELECT 'p' || i, 't' || (i % 100), 'provider-' || i, 'OPENAI', '{}', NULL, false, 10, now(), now(),
       'seed', 'seed'
FROM generate_series(0, 9999) i;
INSERT INTO provider_versions (provider_id, tenant_id, version_number, action, configuration, diff,
                               change_description, changed_by, create_time)
SELECT 'p' || i, 't' || (i % 100), j, 'UPDATE', '{"api_key": "arc1.2.xx"}', '[]', 'seed', 'seed', now()
FROM generate_series(0, 9999) i, generate_series(1, 10) j;
INSERT INTO providers (id, tenant_id, name, provider_type, config, api_key_ciphertext, is_default,
                       version, create_time, update_time, created_by, updated_by)
VALUES ('p-long', 'owner', 'long', 'OPENAI', '{}', NULL, false, 200000, now(), now(), 'seed', 'seed');
INSERT INTO provider_versions (provider_id, tenant_id, version_number, action, configuration, diff,
                               change_description, changed_by, create_time)
SELECT 'p-long', 'owner', j, 'UPDATE', '{"k": 1}', '[]', 'seed', 'seed', now()
FROM generate_series(1, 200000) j;
ANALYZE;
SQL
"${psql[@]}" -d vprobe <<'SQL'
\echo old, another tenant
EXPLAIN (ANALYZE, COSTS OFF)
SELECT pv.version_number, pv.configuration, p.version
FROM provider_versions pv JOIN providers p ON pv.provider_id = p.id
WHERE pv.provider_id = 'p-long' AND p.tenant_id = 'other'
ORDER BY pv.version_number DESC LIMIT 11;
\echo new, another tenant
EXPLAIN (ANALYZE, COSTS OFF)
SELECT pv.version_number, pv.configuration, p.version
FROM provider_versions pv JOIN providers p ON pv.provider_id = p.id
WHERE pv.provider_id = (SELECT id FROM providers WHERE id = 'p-long' AND tenant_id = 'other')
  AND p.tenant_id = 'other'
ORDER BY pv.version_number DESC LIMIT 11;
\echo new, the owner
EXPLAIN (ANALYZE, COSTS OFF)
SELECT pv.version_number, pv.configuration, p.version
FROM provider_versions pv JOIN providers p ON pv.provider_id = p.id
WHERE pv.provider_id = (SELECT id FROM providers WHERE id = 'p-long' AND tenant_id = 'owner')
  AND p.tenant_id = 'owner'
ORDER BY pv.version_number DESC LIMIT 11;
SQL
"${psql[@]}" -d test -c 'DROP DATABASE vprobe'
