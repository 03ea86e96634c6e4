-- Outpost central on PostgreSQL, schema version 3: patch deployments from
-- central (issue 15). Same conventions as V1 and V2: tenant_id on every
-- row, text keys COLLATE "C", row bodies in outpost-proto's codec,
-- row-level security for `outpost_api`.

-- Orders central sends sites: (tenant, order id) → OrderRecord.
CREATE TABLE deploy_orders (
    tenant_id text COLLATE "C" NOT NULL,
    id text COLLATE "C" NOT NULL,
    created_ms bigint NOT NULL,
    body bytea NOT NULL,
    PRIMARY KEY (tenant_id, id)
);

-- An order's delivery to one site: (tenant, site, order) → Delivery;
-- `open` while queued (what goes down after each Welcome).
CREATE TABLE deploy_deliveries (
    tenant_id text COLLATE "C" NOT NULL,
    site_id text COLLATE "C" NOT NULL,
    order_id text COLLATE "C" NOT NULL,
    open boolean NOT NULL,
    body bytea NOT NULL,
    PRIMARY KEY (tenant_id, site_id, order_id)
);
CREATE INDEX deploy_deliveries_open ON deploy_deliveries (tenant_id, site_id) WHERE open;

-- The newest progress a site reported of one of its deployments:
-- (tenant, site, deployment) → SiteDeploymentRecord.
CREATE TABLE site_deployments (
    tenant_id text COLLATE "C" NOT NULL,
    site_id text COLLATE "C" NOT NULL,
    deployment text COLLATE "C" NOT NULL,
    updated_at_ms bigint NOT NULL,
    body bytea NOT NULL,
    PRIMARY KEY (tenant_id, site_id, deployment)
);

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['deploy_orders', 'deploy_deliveries', 'site_deployments']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_only ON %I TO outpost_api '
            'USING (tenant_id = current_setting(''app.tenant'', true)) '
            'WITH CHECK (tenant_id = current_setting(''app.tenant'', true))', t);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I TO outpost_api', t);
    END LOOP;
END
$$;
