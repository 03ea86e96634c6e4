-- Outpost central on PostgreSQL, schema version 15: a deployment read by
-- its id and the deployment list read by page, without the tenant's other
-- orders and reports. Key columns beside the bodies (filled by
-- `PgCentralStore::connect` for rows written before this version: NULL
-- until then), and the indexes that serve them.

-- An order's kind (`OrderRecord.kind.label()`), its deployment and the
-- customers of its sites (who sees it sees them all).
ALTER TABLE deploy_orders ADD COLUMN kind text COLLATE "C";
ALTER TABLE deploy_orders ADD COLUMN deployment text COLLATE "C";
ALTER TABLE deploy_orders ADD COLUMN customers text[];
CREATE INDEX deploy_orders_deployment ON deploy_orders (tenant_id, deployment, created_ms)
    WHERE deployment IS NOT NULL;
CREATE INDEX deploy_orders_list ON deploy_orders (tenant_id, created_ms DESC, deployment)
    WHERE kind = 'deployment';

-- An order's deliveries by order (the primary key starts with the site).
CREATE INDEX deploy_deliveries_order ON deploy_deliveries (tenant_id, order_id);

-- A report's site customer, whether central made the deployment, and the
-- creation time the site reports (`summary.created_at_ms`, 0 if none).
ALTER TABLE site_deployments ADD COLUMN created_ms bigint;
ALTER TABLE site_deployments ADD COLUMN customer text COLLATE "C";
ALTER TABLE site_deployments ADD COLUMN from_central boolean;
CREATE INDEX site_deployments_deployment ON site_deployments (tenant_id, deployment);
CREATE INDEX site_deployments_list ON site_deployments (tenant_id, created_ms DESC, deployment, site_id)
    WHERE NOT from_central;
