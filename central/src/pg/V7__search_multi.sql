-- Outpost central on PostgreSQL, schema version 7 (V5 and V6 are other
-- branches'; the runner applies every known version not yet applied, so
-- the numbers may arrive out of order).
--
-- 1. The console's device search and the dashboard's counts in SQL
--    (no per-request in-memory index): the sort and search keys of each
--    device, computed by the store from the row body when it writes it
--    (NULL for rows written before: filled at start by the store), the
--    site's name, and the device of each alert.
ALTER TABLE devices
    ADD COLUMN host_lc text COLLATE "C",
    ADD COLUMN os_lc text COLLATE "C",
    ADD COLUMN status_rank smallint,
    ADD COLUMN cpu_key bigint,
    -- Lowercased tags joined by newlines, and each lowercased address
    -- after a tab (a word matches the start of an address: `\tWORD`).
    ADD COLUMN tags_lc text COLLATE "C" NOT NULL DEFAULT '',
    ADD COLUMN ips_lc text COLLATE "C" NOT NULL DEFAULT '',
    -- host_lc, os_lc and tags_lc joined by newlines: what a search word
    -- may be a substring of (words hold no whitespace).
    ADD COLUMN words_lc text COLLATE "C";
ALTER TABLE sites
    ADD COLUMN name text COLLATE "C",
    ADD COLUMN name_lc text COLLATE "C";
ALTER TABLE alerts
    ADD COLUMN device text COLLATE "C";

-- The list's default order (hostname, then site and device) read from
-- the cursor; the other sorts are a top-N over the tenant's rows.
CREATE INDEX devices_search_host ON devices (tenant_id, host_lc, site_id, device);
-- Search words (`LIKE '%word%'`) through trigram indexes (pg_trgm is a
-- trusted extension: the database owner may create it).
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE INDEX devices_words_trgm ON devices USING gin (words_lc gin_trgm_ops);
CREATE INDEX devices_ips_trgm ON devices USING gin (ips_lc gin_trgm_ops);
-- Open alerts of one device (counts, the critical filter).
CREATE INDEX alerts_open_device ON alerts (tenant_id, site_id, device)
    WHERE state IN ('pending', 'firing');

-- 2. Failed-login rate limits shared by every instance (the generic cell
--    rate algorithm's theoretical arrival time per key: `u:tenant/user`
--    or `a:address`). Owner role only: the API role never reads it.
CREATE TABLE login_limits (
    key text COLLATE "C" PRIMARY KEY,
    tat_ms bigint NOT NULL
);
CREATE INDEX login_limits_idle ON login_limits (tat_ms);
