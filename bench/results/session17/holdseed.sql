-- 10,000 providers in 100 tenants, each with ten version snapshots, every
-- key "sealed" under version 2 (the values are never decrypted: the
-- count reads only the version a ciphertext names).
BEGIN;
WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 9999)
INSERT INTO providers (id, tenant_id, name, provider_type, config, api_key_ciphertext, is_default,
                       version, create_time, update_time, created_by, updated_by)
SELECT printf('p%05d', i), printf('t%03d', i % 100), printf('provider-%05d', i), 'OPENAI',
       '{"base_url":"https://api.example.com/v1","model":"gpt-4o"}',
       'arc1.2.' || hex(randomblob(60)), 0, 10,
       '2026-12-07T00:00:00Z', '2026-12-07T00:00:00Z', 'seed', 'seed'
FROM n;
WITH RECURSIVE v(j) AS (SELECT 1 UNION ALL SELECT j + 1 FROM v WHERE j < 10)
INSERT INTO provider_versions (provider_id, tenant_id, version_number, action, configuration, diff,
                               change_description, changed_by, create_time)
SELECT p.id, p.tenant_id, v.j, 'UPDATE',
       json_object('name', p.name, 'provider_type', 'OPENAI', 'config', json(p.config),
                   'api_key', 'arc1.2.' || hex(randomblob(60)), 'is_default', json('false'),
                   'api_key_revision', v.j),
       '{}', 'seed', 'seed', '2026-12-07T00:00:00Z'
FROM providers p, v;
COMMIT;
