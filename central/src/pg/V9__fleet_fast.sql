-- Outpost central on PostgreSQL, schema version 9: the dashboard's counts
-- and the console's device list at 100,000 devices (issue 16, p99 goal
-- 100 ms).
--
-- 1. The counts of each site, maintained by the apply transaction (which
--    holds the site's row `FOR UPDATE`, so two instances applying batches
--    of one site recount it one after the other; a replayed batch changes
--    nothing and recounts nothing). `fleet_counts` reads these ~1 row per
--    site instead of grouping every device. Device counters count the
--    site's devices (a device's customer is always its site's); alert
--    counters count the site's open alerts. Filled at start for sites
--    without a row (databases written before version 9).
CREATE TABLE site_counts (
    tenant_id text COLLATE "C" NOT NULL,
    site_id text COLLATE "C" NOT NULL,
    customer text COLLATE "C" NOT NULL,
    devices bigint NOT NULL,
    online bigint NOT NULL,
    offline bigint NOT NULL,
    pending bigint NOT NULL,
    revoked bigint NOT NULL,
    -- Devices with a firing critical alert.
    critical bigint NOT NULL,
    alerts_pending bigint NOT NULL,
    firing_info bigint NOT NULL,
    firing_warning bigint NOT NULL,
    firing_critical bigint NOT NULL,
    PRIMARY KEY (tenant_id, site_id)
);
CREATE INDEX site_counts_customer ON site_counts (tenant_id, customer);

ALTER TABLE site_counts ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_only ON site_counts TO outpost_api
    USING (tenant_id = current_setting('app.tenant', true))
    WITH CHECK (tenant_id = current_setting('app.tenant', true));
GRANT SELECT, INSERT, UPDATE, DELETE ON site_counts TO outpost_api;

-- 2. The list's filters and sorts read an index in the page's order (the
--    hostname, site and device always follow the sort key), so a page is
--    the first rows of an index range, not a sort of every match.
CREATE INDEX devices_customer_host ON devices (tenant_id, customer, host_lc, site_id, device);
CREATE INDEX devices_status_host ON devices (tenant_id, status_rank, host_lc, site_id, device);
CREATE INDEX devices_cpu_host ON devices (tenant_id, cpu_key, host_lc, site_id, device);
-- Devices with a firing critical alert (the `critical` filter starts from
-- these few rows).
CREATE INDEX alerts_critical_device ON alerts (tenant_id, site_id, device)
    WHERE state = 'firing' AND severity = 'critical';
