-- 1,000,000 audit events of tenant `acme` for PostgreSQL (marked sealed, so
-- that the registry's sealing task leaves them), then planner statistics.
INSERT INTO audit_events (tenant_id, event_time, actor, action, kind, resource, request_id,
                          details, chain_seq, hash)
SELECT 'acme', now() - (1000000 - i) * interval '1 second', 'alice', 'AGENT_UPDATE', 'agent',
       'agents/0193a000-0000-7000-8000-' || lpad(to_hex(i % 1000), 12, '0'), NULL,
       '{"version": 2}', -i, 'seeded'
FROM generate_series(1, 1000000) i;
ANALYZE;
