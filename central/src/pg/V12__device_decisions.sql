-- Outpost central on PostgreSQL, schema version 12: devices' approval
-- decisions as their sites report them (uplink protocol 9: which rule
-- decided each missing patch). Same conventions as V3: tenant_id on every
-- row, text keys COLLATE "C", row bodies in outpost-proto's codec,
-- row-level security for `outpost_api`.

-- (tenant, site, device) → DecisionsRecord; only a later computation
-- replaces the one held.
CREATE TABLE device_decisions (
    tenant_id text COLLATE "C" NOT NULL,
    site_id text COLLATE "C" NOT NULL,
    device text COLLATE "C" NOT NULL,
    computed_ms bigint NOT NULL,
    body bytea NOT NULL,
    PRIMARY KEY (tenant_id, site_id, device)
);

ALTER TABLE device_decisions ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_only ON device_decisions TO outpost_api
    USING (tenant_id = current_setting('app.tenant', true))
    WITH CHECK (tenant_id = current_setting('app.tenant', true));
GRANT SELECT, INSERT, UPDATE, DELETE ON device_decisions TO outpost_api;
