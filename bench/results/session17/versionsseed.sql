-- Tenant `owner`'s provider 0193a000-0000-7000-8000-00000000a001 with a history of 200,000 versions;
-- tenant `other` has nothing.
BEGIN;
INSERT INTO providers (id, tenant_id, name, provider_type, config, api_key_ciphertext, is_default,
                       version, create_time, update_time, created_by, updated_by)
VALUES ('0193a000-0000-7000-8000-00000000a001', 'owner', 'long-history', 'OPENAI', '{"default_parameters":{},"is_default":false,"model_name":"gpt-4o","name":"long-history","provider_type":"OPENAI"}', NULL, 0, 200000,
        '2026-12-07T00:00:00Z', '2026-12-07T00:00:00Z', 'seed', 'seed');
WITH RECURSIVE v(j) AS (SELECT 1 UNION ALL SELECT j + 1 FROM v WHERE j < 200000)
INSERT INTO provider_versions (provider_id, tenant_id, version_number, action, configuration, diff,
                               change_description, changed_by, create_time)
SELECT '0193a000-0000-7000-8000-00000000a001', 'owner', j, 'UPDATE',
       json_object('default_parameters', json_object('temperature', j % 10), 'is_default', json('false'),
                   'model_name', 'gpt-4o', 'name', 'long-history', 'provider_type', 'OPENAI'),
       '[]', 'seed', 'seed', '2026-12-07T00:00:00Z'
FROM v;
COMMIT;
