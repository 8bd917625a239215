-- versionsseed.sql for PostgreSQL, with 10,000 other providers of 100
-- tenants (10 versions each) and planner statistics.
INSERT INTO providers (id, tenant_id, name, provider_type, config, api_key_ciphertext, is_default,
                       version, create_time, update_time, created_by, updated_by)
SELECT gen_random_uuid()::text, 't' || (i % 100), 'provider-' || i, 'OPENAI',
       '{"default_parameters":{},"is_default":false,"model_name":"gpt-4o","name":"x","provider_type":"OPENAI"}',
       NULL, false, 10, now(), now(), 'seed', 'seed'
FROM generate_series(0, 9999) i;
INSERT INTO provider_versions (provider_id, tenant_id, version_number, action, configuration, diff,
                               change_description, changed_by, create_time)
SELECT p.id, p.tenant_id, j, 'UPDATE', p.config::json, '[]', 'seed', 'seed', now()
FROM providers p, generate_series(1, 10) j;
INSERT INTO providers (id, tenant_id, name, provider_type, config, api_key_ciphertext, is_default,
                       version, create_time, update_time, created_by, updated_by)
VALUES ('0193a000-0000-7000-8000-00000000a001', 'owner', 'long-history', 'OPENAI',
        '{"default_parameters":{},"is_default":false,"model_name":"gpt-4o","name":"long-history","provider_type":"OPENAI"}',
        NULL, false, 200000, now(), now(), 'seed', 'seed');
INSERT INTO provider_versions (provider_id, tenant_id, version_number, action, configuration, diff,
                               change_description, changed_by, create_time)
SELECT '0193a000-0000-7000-8000-00000000a001', 'owner', j, 'UPDATE',
       json_build_object('default_parameters', json_build_object('temperature', j % 10),
                         'is_default', false, 'model_name', 'gpt-4o', 'name', 'long-history',
                         'provider_type', 'OPENAI'),
       '[]', 'seed', 'seed', now()
FROM generate_series(1, 200000) j;
ANALYZE;
