-- Two tenants with one provider each and a long history of key-bearing
-- version snapshots: `atcap` holds 10,000 stored values (its row and
-- 9,999 snapshots), `over` 100,000 (its row and 99,999). Every key
-- "sealed" under version 2 (never decrypted: the count reads only the
-- version a ciphertext names).
BEGIN;
INSERT INTO providers (id, tenant_id, name, provider_type, config, api_key_ciphertext, is_default,
                       version, create_time, update_time, created_by, updated_by)
VALUES ('p-atcap', 'atcap', 'provider', 'OPENAI',
        '{"base_url":"https://api.example.com/v1","model":"gpt-4o"}',
        'arc1.2.' || hex(randomblob(60)), 0, 9999,
        '2026-12-07T00:00:00Z', '2026-12-07T00:00:00Z', 'seed', 'seed'),
       ('p-over', 'over', 'provider', 'OPENAI',
        '{"base_url":"https://api.example.com/v1","model":"gpt-4o"}',
        'arc1.2.' || hex(randomblob(60)), 0, 99999,
        '2026-12-07T00:00:00Z', '2026-12-07T00:00:00Z', 'seed', 'seed');
WITH RECURSIVE v(j) AS (SELECT 1 UNION ALL SELECT j + 1 FROM v WHERE j < 99999)
INSERT INTO provider_versions (provider_id, tenant_id, version_number, action, configuration, diff,
                               change_description, changed_by, create_time)
SELECT p.id, p.tenant_id, v.j, 'UPDATE',
       json_object('name', p.name, 'provider_type', 'OPENAI', 'config', json(p.config),
                   'api_key', 'arc1.2.' || hex(randomblob(60)), 'is_default', json('false'),
                   'api_key_revision', v.j),
       '{}', 'seed', 'seed', '2026-12-07T00:00:00Z'
FROM providers p, v
WHERE v.j <= p.version;
COMMIT;
